"""Registry of methods by name; third-party packages add methods through an entry point.

A package exposes a method by declaring, in its ``pyproject.toml``::

    [project.entry-points."mgsr_bench.methods"]
    my_method = "my_package.module:MyMethod"

where ``MyMethod`` subclasses :class:`mgsr_bench.methods.Method` and declares its options as fields
(:mod:`mgsr_bench.methods.options`).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from mgsr_bench.errors import UserError, unknown_name
from mgsr_bench.methods.base import Method
from mgsr_bench.methods.options import check_options, option_fields

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
    """Instantiate a method by name with its options; unknown names, unknown options and values of
    the wrong type or out of range raise ``UserError``."""
    cls = method_class(name)
    check_options(cls, options)
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad options for method {name!r}: {e}") from None


def method_class(name: str) -> type[Method]:
    """The class registered under ``name``; an unknown name raises ``UserError`` naming the nearest."""
    methods = available_methods()
    if name not in methods:
        raise unknown_name("method", name, methods)
    return methods[name]


def option_names(name: str) -> tuple[str, ...]:
    """The options of the method registered under ``name`` (its dataclass fields), e.g. to tell
    which methods take a ``--set KEY=VALUE``."""
    return tuple(option_fields(method_class(name)))
