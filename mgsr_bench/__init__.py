"""mgsr-bench: a benchmark and evaluation suite for knowledge distillation of large language models."""

__version__ = "0.1.0"
