"""Method options: the fields of a method's dataclass, each with its type, default and rule.

Every :class:`mgsr_bench.methods.Method` subclass is a keyword-only dataclass whose fields are its
options. A field's annotation is the option's type, its default the option's default, and the
:class:`Rule` that :func:`option` stores in its metadata the values it accepts. Construction, recipe
loading, ``--set`` and run records all read these fields, so an option is declared once::

    temperature: float = option(1.0, gt=0)
    divergence: str = option("srkl", choices=("sfkl", "srkl"))

User input (a recipe's ``options:``, ``--set``) is checked by :func:`check_options` first: unknown
names and wrong types are one-line ``UserError`` s. Values are checked against their rules when the
method is built (:func:`check_values`, from ``Method.__post_init__``), so a method built in code is
held to the same rules.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mgsr_bench.config import type_problem
from mgsr_bench.errors import UserError

if TYPE_CHECKING:
    from mgsr_bench.methods.base import Method

RULE = "rule"  # the key of a field's metadata that holds its Rule


@dataclass(frozen=True)
class Rule:
    """The values an option accepts beyond its type: bounds (``ge``/``le`` inclusive, ``gt``/``lt``
    exclusive) for numbers, or ``choices`` for strings."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """The accepted values in words: ``> 0``, ``in [0, 1)``, ``one of a, b``."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            return f"in {'[' if self.ge is not None else '('}{low}, {high}{']' if self.le is not None else ')'}"
        if low is not None:
            return f"{'>=' if self.ge is not None else '>'} {low}"
        return f"{'<=' if self.le is not None else '<'} {high}"

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (already of the option's type) is within the rule; NaN is within no bound."""
        if self.choices:
            return value in self.choices
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def problem(self, value: Any) -> str | None:
        """Why ``value`` breaks the rule (``must be > 0, got -1``), or None."""
        if self.accepts(value):
            return None
        shown = repr(value) if self.choices else value
        return f"must be {self.describe()}, got {shown}"


def option(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field for an option with its default and, when given, its rule."""
    rule = Rule(ge, gt, le, lt, tuple(choices))
    metadata = {RULE: rule} if rule != Rule() else {}
    return dataclasses.field(default=default, metadata=metadata)


def option_fields(method: type[Method]) -> dict[str, dataclasses.Field]:
    """A method class's options by name, in declaration order (its base classes' first)."""
    return {f.name: f for f in dataclasses.fields(method)}


@functools.cache
def _option_types(method: type[Method]) -> dict[str, Any]:
    """Each option's annotation, resolved; empty where a plug-in's annotations do not resolve (its
    rules still apply, its types go unchecked)."""
    try:
        hints = typing.get_type_hints(method)
    except Exception:
        return {}
    return {name: hints.get(name) for name in option_fields(method)}


def check_options(method: type[Method], options: dict[str, Any]) -> None:
    """Refuse an unknown option (naming the nearest one) or a value that is not of its field's type
    (bool, int, float or str; :func:`mgsr_bench.config.type_problem`), before any rule compares it
    with anything: a YAML string ``"false"`` for a bool would be true, and ``.nan`` passes range checks."""
    fields = option_fields(method)
    for key in options:
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            known = f"did you mean {hint[0]!r}?" if hint else f"its options: {', '.join(fields) or 'none'}"
            raise UserError(f"bad options for method {method.name!r}: unknown option {key!r}; {known}")
    types = _option_types(method)
    for key, value in options.items():
        expected = types.get(key)
        problem = type_problem(value, expected) if expected in (bool, int, float, str) else None
        if problem:
            raise UserError(f"option {key!r} of method {method.name!r} {problem}, got {value!r}")


def check_values(method: Method) -> None:
    """Raise ``ValueError`` naming the first option whose value breaks its field's rule."""
    for f in dataclasses.fields(method):
        rule = f.metadata.get(RULE)
        problem = rule.problem(getattr(method, f.name)) if rule is not None else None
        if problem:
            raise ValueError(f"{f.name} {problem}")
