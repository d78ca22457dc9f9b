"""Experiment trackers through accelerate's ``log_with``: TensorBoard, W&B, trackio, MLflow.

A run with ``--report-to`` logs, at every step, every number of the step's history record (the loss,
each method's own terms as the method reports them: MGSR's ``mgsr_dac``, ``mgsr_span`` and kept
fraction, SCRG's ``scrg_corrected`` and ``scrg_rel_position``, DAC-KL's band bounds, DistiLLM's
replay fraction, the sample source, ...), the validation metrics on the steps that validate,
training tokens per second and the peak memory so far. The run's resolved config goes in as
hyperparameters. Trackers write under the run's folder (``OUT/logs``); none is on by default.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mgsr_bench.errors import UserError

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


@dataclass(frozen=True)
class Tracking:
    """Where and to what a run reports: accelerate's ``log_with`` names, its ``project_dir``, the
    run's name there, and the hyperparameters to record."""

    report_to: tuple[str, ...]
    folder: Path
    run_name: str
    config: dict[str, Any]


def parse_report_to(text: str | None) -> tuple[str, ...]:
    """``--report-to tensorboard,wandb``: known trackers whose package is installed, or one line."""
    if not text or text == "none":
        return ()
    import importlib.util

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"--report-to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)} (or none)")
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise UserError(f"--report-to {name} needs the {_PACKAGES[name]} package: pip install {_PACKAGES[name]}")
    return names


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``config`` flattened to ``a/b`` keys with the scalar values trackers take (others as text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hyperparameters(value, name + "/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def peak_memory_gib() -> float:
    """The device's peak allocated memory so far (GPU), else the process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30


def step_metrics(record: dict[str, Any], seconds: float) -> dict[str, float]:
    """What one step logs: the record's numbers, tokens per second, peak memory."""
    metrics = {k: float(v) for k, v in record.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
    if seconds > 0 and "tokens" in record:
        metrics["tokens_per_s"] = record["tokens"] / seconds
    metrics["peak_memory_gib"] = peak_memory_gib()
    return metrics
