"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one file, ``step-NNNNNNN.pt``, written to a temporary name, flushed to disk and
renamed, so a kill at any moment leaves the previous checkpoints intact and never a torn one; the
newest ``keep`` are kept. It holds the student's weights, the optimiser and scheduler, the RNG
states of Python, torch (and CUDA), the sample source's generators and DistiLLM's replay buffer
and threshold, a loss sub-network (MGSR's f_phi) with its optimiser, the history so far, the best
validated weights, the elapsed time, and the hash of the run's configuration: a checkpoint is only
resumed by the run that wrote it. The data order needs no state: every global batch is drawn from
a generator seeded with the training seed, so resuming at step ``k`` replays the first ``k`` draws.

Files are read with ``torch.load(weights_only=True)``: only tensors and plain containers, never
arbitrary pickled objects.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import torch

from mgsr_bench.data.collate import Example
from mgsr_bench.errors import UserError

PATTERN = re.compile(r"^step-(\d+)\.pt$")


def examples_state(rows: list[Example]) -> list[dict[str, Any]]:
    return [{"prompt_ids": e.prompt_ids, "response_ids": e.response_ids, "origin": e.origin, "links": e.links}
            for e in rows]


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` wants the nested tuples ``getstate`` gave (a load may return lists)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def source_state(source: Any) -> dict[str, Any] | None:
    """A batch source's generators, and DistiLLM's replay buffer, threshold and reference loss."""
    if source is None:
        return None
    state: dict[str, Any] = {"rng": source.rng.getstate(), "counts": dict(source.counts)}
    if source.adaptive is not None:
        a = source.adaptive
        state["adaptive"] = {"rng": a.rng.getstate(), "threshold": a.threshold, "reference_loss": a.reference_loss,
                             "buffer": examples_state(list(a.buffer))}
    return state


def restore_source(source: Any, state: dict[str, Any] | None) -> None:
    if source is None or state is None:
        return
    source.rng.setstate(_as_tuple(state["rng"]))
    source.counts = dict(state["counts"])
    if "adaptive" in state:
        a, saved = source.adaptive, state["adaptive"]
        a.rng.setstate(_as_tuple(saved["rng"]))
        a.threshold, a.reference_loss = saved["threshold"], saved["reference_loss"]
        a.buffer.clear()
        a.buffer.extend(Example(**row) for row in saved["buffer"])


def _write(path: Path, state: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as ``folder/step-NNNNNNN.pt`` atomically and delete all but the newest ``keep``."""
    path = _write(folder / f"step-{step:07d}.pt", state)
    for old in checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def save_failure(folder: Path, step: int, state: dict[str, Any], batch: list[Example]) -> Path:
    """The state before a failed step and that step's batch, as ``folder/nonfinite-step-N.pt`` (never resumed)."""
    return _write(folder / f"nonfinite-step-{step}.pt", {**state, "batch": examples_state(batch)})


def checkpoints(folder: Path) -> list[Path]:
    """The folder's checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(folder: Path, config_hash: str) -> dict[str, Any] | None:
    """The newest checkpoint's state, or None when there is none; refuses another run's checkpoint."""
    found = checkpoints(folder)
    if not found:
        return None
    try:
        state = torch.load(found[-1], map_location="cpu", weights_only=True)
    except Exception as e:  # a file that is not a checkpoint: say which, do not guess
        raise UserError(f"cannot read checkpoint {found[-1]} ({type(e).__name__}); delete it to resume "
                        "from the one before") from None
    if state.get("config_hash") != config_hash:
        raise UserError(f"{folder} holds checkpoints of a different run (config hash {state.get('config_hash')} "
                        f"vs {config_hash}); choose another --out or delete {folder}")
    return state
