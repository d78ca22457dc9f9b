"""Shared fixtures: a small tokenizer and tiny random-init LLaMA models, built in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mgsr_bench.suite.build import ModelShape
from mgsr_bench.suite.tasks import generate_split

SHARED = Path(os.environ.get("MGSR_BENCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def records():
    return generate_split(240, seed=123)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, records):
    from mgsr_bench.suite.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer((r["prompt"] + r["output"] for r in records), 400, out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from mgsr_bench.models import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def tiny_model(vocab_size: int, seed: int = 0, hidden: int = 32):
    return ModelShape(hidden, 1, 2, 64).build(vocab_size, seed)


@pytest.fixture()
def student(tokenizer):
    return tiny_model(len(tokenizer), seed=1)


@pytest.fixture()
def teacher(tokenizer):
    return tiny_model(len(tokenizer), seed=2, hidden=48).eval()
