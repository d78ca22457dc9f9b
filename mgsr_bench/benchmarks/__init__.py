"""Benchmark scripts: each prints its figures and, with --json, writes them."""
