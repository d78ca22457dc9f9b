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


@pytest.fixture()
def hub_style_pair(tmp_path, tokenizer, records):
    """Teacher and student saved with save_pretrained, loaded back through from_pretrained paths."""
    from mgsr_bench.data.jsonl import write_records

    for name, hidden in (("teacher", 48), ("student", 32)):
        tiny_model(len(tokenizer), seed=hidden, hidden=hidden).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    write_records(tmp_path / "train.jsonl", records[:160])
    write_records(tmp_path / "valid.jsonl", records[160:200])
    write_records(tmp_path / "test.jsonl", records[200:216])
    return tmp_path


@pytest.fixture()
def offline(monkeypatch):
    """No Hub for this test. ``huggingface_hub`` and ``datasets`` read ``HF_HUB_OFFLINE`` (and
    ``HF_DATASETS_OFFLINE``) once, when first imported, so the variables alone change nothing once
    they are: their flags are set too (with only the variable, a config lookup goes to the network
    and spends about 23 s in retries here before failing)."""
    import importlib.util

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    if importlib.util.find_spec("datasets") is not None:
        import datasets.config

        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture()
def cli(capsys):
    """``mgsr-bench ARGS`` run in this process (``main``), as a ``CompletedProcess``: its exit status
    and what it printed. For the tests of messages and exit codes: a subprocess spends seconds on
    imports each time. (``python -m mgsr_bench`` itself runs in the tests that train and evaluate.)"""
    import subprocess

    from mgsr_bench.cli.main import main

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()  # what the test printed before
        environment = dict(os.environ)  # main sets variables for its process (TOKENIZERS_PARALLELISM)
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code
        finally:
            os.environ.clear()
            os.environ.update(environment)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def free_port() -> int:
    """A loopback port free now, for a rendezvous, instead of a fixed one another run may hold."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], env: dict[str, str], timeout: float = 600, succeed: bool = True):
    """``python -m torch.distributed.run --nproc_per_node 2 ARGS`` on a free port, once more if a worker
    was killed by a signal; the first attempt's log is kept as a warning, and a failure that repeats,
    or any other failure, fails the test with the workers' own output (with ``succeed=False`` the
    finished process is returned instead, for tests of runs that must fail). (The workers end with
    ``end_processes``; the retry is for aborts outside the project's code.)"""
    import subprocess
    import sys
    import warnings

    for attempt in (1, 2):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(free_port()), *args],
                              env=env, capture_output=True, text=True, timeout=timeout)
        # torchrun's summary: the first failure a signal (not the SIGTERM it sends the others after a failure)
        killed = "exitcode  : -" in proc.stderr.rpartition("Root Cause")[2]
        if proc.returncode == 0 or not killed or attempt == 2:
            break
        warnings.warn(f"a torchrun worker was killed by a signal; running again:\n{proc.stderr[-6000:]}")
    assert proc.returncode == 0 or not succeed, proc.stdout[-3000:] + proc.stderr[-12000:]
    return proc
