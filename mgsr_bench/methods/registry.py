"""Registry of methods by name; third-party packages add methods through an entry point.

A package exposes a method by declaring, in its ``pyproject.toml``::

    [project.entry-points."mgsr_bench.methods"]
    my_method = "my_package.module:MyMethod"

where ``MyMethod`` subclasses :class:`mgsr_bench.methods.Method`.
"""

from __future__ import annotations

import typing
from importlib.metadata import entry_points
from typing import Any

from mgsr_bench.config import type_problem
from mgsr_bench.errors import UserError, unknown_name
from mgsr_bench.methods.base import Method

ENTRY_POINT_GROUP = "mgsr_bench.methods"
_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method under its ``name``; a second method with the same name is an error."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice ({_REGISTRY[cls.name]} and {cls})")
    _REGISTRY[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # a broken plug-in must not hide behind a traceback
            raise UserError(f"cannot load method entry point {ep.name!r} ({ep.value}): {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise UserError(f"entry point {ep.name!r} ({ep.value}) is not a mgsr_bench.methods.Method subclass")
        if _REGISTRY.get(ep.name, cls) is not cls:
            raise UserError(f"entry point {ep.name!r} ({ep.value}) clashes with the registered method of that name")
        _REGISTRY[ep.name] = cls


def available_methods() -> dict[str, type[Method]]:
    """All methods by name: the built-ins plus those installed through entry points."""
    import mgsr_bench.methods.builtin  # noqa: F401  (registers the built-ins)
    import mgsr_bench.methods.mgsr  # noqa: F401

    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str, **options: Any) -> Method:
    """Instantiate a method by name with its options; unknown names or options raise ``UserError``."""
    methods = available_methods()
    if name not in methods:
        raise unknown_name("method", name, methods)
    cls = methods[name]
    _check_option_types(cls, options)
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad options for method {name!r}: {e}") from None


def _check_option_types(cls: type[Method], options: dict[str, Any]) -> None:
    """Refuse an option whose value is not of its constructor annotation's type (bool, int, float or
    str; :func:`mgsr_bench.config.type_problem`), naming it, before the constructor compares it with
    anything: a YAML string ``"false"`` for a bool would be true, and ``.nan`` passes range checks."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a plug-in's annotations that do not resolve: its constructor checks alone
        return
    for key, value in options.items():
        expected = hints.get(key)
        problem = type_problem(value, expected) if expected in (bool, int, float, str) else None
        if problem:
            raise UserError(f"option {key!r} of method {cls.name!r} {problem}, got {value!r}")
