"""The run record: everything needed to trust, compare and reproduce one evaluated model.

One JSON file per run, written atomically (complete or absent), with: the method and its recipe,
the resolved config and its hash, the teacher/student pair, the decoding settings and seeds,
per-dataset per-seed scores with summaries, training history and wall time, package versions and
the git commit of the code that produced it.
"""

from __future__ import annotations

import json
import math
import platform
import functools
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mgsr_bench.config import PROJECT_ROOT, config_hash
from mgsr_bench.data.jsonl import write_atomic
from mgsr_bench.errors import UserError
from mgsr_bench.results.schema import load_schema, non_finite, schema_error

SCHEMA = "mgsr-bench/run-record"
_CODE_PATHS = ("mgsr_bench", "baselines", "methods", "pyproject.toml")
SCHEMA_VERSION = 1
SCHEMA_FILE = "run-record.schema.json"  # JSON Schema of the current version, next to this module
# One training seed's run among several of one recipe is labelled ``<label>@seed<N>`` (e.g. ``kd@seed2``):
# '@' is legal in file names on every system and in no recipe name, so the label names its record,
# model and checkpoint folders as a plain label does, and reads apart from the recipes' own hyphens.
SEED_MARK = "@seed"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("mgsr-bench", "torch", "transformers", "accelerate", "tokenizers", "rouge-score"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the code that ran, with ``+dirty`` when its code, recipes or packaging had
    uncommitted changes (result files, such as the committed leaderboards a run rewrites, do not count)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *_CODE_PATHS],
                               cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def seeded_label(label: str, seed: int) -> str:
    """The label of the run of ``label`` with training seed ``seed``, one of several such runs."""
    return f"{label}{SEED_MARK}{seed}"


def record_group(record: dict[str, Any]) -> str:
    """The row a record is aggregated into: its ``group`` (the label without a training seed), or
    its label for records that carry no group."""
    return record.get("group") or record["label"]


def record_seed(record: dict[str, Any]) -> int | None:
    """The training seed of the run a record scores: ``training.seed``, else the resolved config's
    ``train.seed`` (student records that carry no ``training.seed``); None for the teacher and
    ``eval``'s records, which score no run of the harness."""
    training = record.get("training") or {}
    if "seed" in training:
        return training["seed"]
    train = (record.get("config") or {}).get("train")
    return train.get("seed") if isinstance(train, dict) else None


def make_record(*, label: str, method: str, config: dict[str, Any], pair: dict[str, Any],
                evaluation: dict[str, Any], scores: dict[str, Any], wall_time_s: float,
                training: dict[str, Any] | None = None, group: str | None = None) -> dict[str, Any]:
    """Assemble a record; ``config`` is the resolved recipe (or evaluation settings) it hashes.
    ``group`` is the row the record belongs to (default: its label); several training seeds' runs
    of one recipe share it. A number of ``training`` that is not finite (the gradient norm of a step
    whose fp16 gradients overflowed and were skipped) is recorded as null: records hold finite
    numbers only."""
    import torch

    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "label": label, "group": group or label,
        "method": method,
        "config": config, "config_hash": config_hash(config), "pair": pair, "evaluation": evaluation,
        "scores": scores, "training": _finite_or_null(training), "wall_time_s": round(wall_time_s, 2),
        "versions": package_versions(), "git_commit": git_commit(),
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def validate_record(record: Any, source: str) -> dict[str, Any]:
    """Check the record against its JSON Schema (``run-record.schema.json``), and that every number in
    it is finite; errors name the field and the file."""
    if not isinstance(record, dict):
        raise UserError(f"bad run record {source}: expected a JSON object")
    if record.get("schema") != SCHEMA:
        raise UserError(f"bad run record {source}: field 'schema' must be {SCHEMA!r}")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"bad run record {source}: unsupported schema_version {record.get('schema_version')!r} "
                        f"(this mgsr-bench reads version {SCHEMA_VERSION})")
    error = non_finite(record) or schema_error(record, load_schema(SCHEMA_FILE))
    if error:
        raise UserError(f"bad run record {source}: {error}")
    return record


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """Validate and write a record atomically."""
    validate_record(record, str(path))
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return Path(path)


def read_record(path: str | Path) -> dict[str, Any]:
    """Read and validate a record."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"run record not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"bad run record {path}: not UTF-8 text (restore the file or delete it)") from None
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
        raise UserError(f"bad run record {path}: {json_problem(e)} (restore the file or delete it)") from None
    except RecursionError:
        raise UserError(f"bad run record {path}: JSON nested too deeply (restore the file or delete it)") from None
    return validate_record(data, str(path))


def json_problem(error: ValueError) -> str:
    """What is wrong with a JSON text that did not parse, in one line."""
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON at line {error.lineno}: {error.msg}"
    return "invalid JSON: " + str(error).splitlines()[0]
