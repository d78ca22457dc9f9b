"""Distillation methods: a small interface, options declared as dataclass fields, and a registry by
name (built-ins and entry points)."""

from mgsr_bench.methods.base import Method
from mgsr_bench.methods.options import option
from mgsr_bench.methods.registry import available_methods, get_method, method_class, option_names, register

__all__ = ["Method", "available_methods", "get_method", "method_class", "option", "option_names", "register"]
