"""Distillation methods: a small interface and a registry by name (built-ins and entry points)."""

from mgsr_bench.methods.base import Method
from mgsr_bench.methods.registry import available_methods, get_method, register

__all__ = ["Method", "available_methods", "get_method", "register"]
