"""The suite's canonical models, shipped in the package: one teacher for every machine.

A suite's teacher depends on the floating-point kernels of the machine that trains it (builds of
one configuration on two CPUs differed by 8 validation ROUGE-L points), so a suite rebuilt
everywhere is a different benchmark everywhere. The canonical tokenizer, teacher and SFT-initialised
student of a suite are therefore files in ``mgsr_bench/suite/shipped/<name>/`` with a
``manifest.json`` of what they were built from: the suite's key (its configuration and suite code
version), a digest of every data split and of both models' weights, and the build's report. A
machine installs them into its cache instead of training them; only the data, a pure function of the
seed, is generated locally, and it must hash to the manifest's digests, so a changed generator is
caught instead of silently pairing old models with new data.

A build from scratch (``mgsr-bench build-suite --from-scratch``) trains its own models beside the
cache and reports how its teacher compares with the shipped one; ``--ship`` makes it the new
shipped suite. ``--keep-teacher`` keeps the shipped tokenizer and teacher and trains only the SFT
init, for a change that left the teacher's inputs (``teacher_inputs``) as they were: the teacher is
the hour of the build, and a new teacher would make every committed record another pair's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from mgsr_bench.data.jsonl import read_records, records_text, write_atomic, write_records
from mgsr_bench.errors import UserError
from mgsr_bench.models import weights_digest
from mgsr_bench.suite.build import (TEACHER_CODE_VERSION, KeptTeacher, SuiteConfig, build_suite, building_folder,
                                   cache_root, finish_suite, suite_config_from_dict, suite_data, teacher_inputs)

SHIPPED = Path(__file__).resolve().parent / "shipped"
MODELS = ("tokenizer", "teacher", "student-init")
REBUILD = "rebuild and ship it with `mgsr-bench build-suite --from-scratch --ship`"


def shipped_folder(config: SuiteConfig) -> Path | None:
    """The shipped files of ``config``'s suite, or None when its name has none."""
    folder = SHIPPED / config.name
    return folder if (folder / "manifest.json").is_file() else None


def data_digests(data: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """SHA-256 (16 hex digits) of each split's JSONL text."""
    return {split: hashlib.sha256(records_text(rows).encode()).hexdigest()[:16] for split, rows in sorted(data.items())}


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def check_shipped(config: SuiteConfig, manifest: dict[str, Any], data: dict[str, list[dict[str, Any]]]) -> None:
    """Refuse shipped models that do not belong to this code's suite: another configuration or suite
    code version (the key), or data that no longer hashes as it did when they were trained."""
    if manifest["key"] != config.key():
        raise UserError(f"the shipped suite {config.name!r} is {manifest['key']}, but this code's configuration is "
                        f"{config.key()} (the configuration or SUITE_CODE_VERSION changed): {REBUILD}")
    digests = data_digests(data)
    changed = sorted(s for s in manifest["data"] if digests.get(s) != manifest["data"][s])
    if changed:
        raise UserError(f"the data this code generates for suite {config.name!r} differs from what its shipped models "
                        f"were trained on (splits {', '.join(changed)}): the generator changed; {REBUILD}")


def install_shipped(config: SuiteConfig, folder: Path, root: Path) -> None:
    """Put the shipped suite into the cache at ``root``: generated data checked against the
    manifest, the shipped models copied and their digests checked, renamed into place when whole."""
    manifest = read_manifest(folder)
    data = suite_data(config)
    check_shipped(config, manifest, data)
    tmp = building_folder(root)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, rows in data.items():
            write_records(tmp / "data" / f"{split}.jsonl", rows)
        for name in MODELS:
            shutil.copytree(folder / name, tmp / name)
        for name in ("teacher", "student-init"):
            if weights_digest(tmp / name) != manifest["weights"][name]:
                raise UserError(f"the shipped {name} of suite {config.name!r} does not match its manifest's digest "
                                f"(a damaged checkout?): restore {folder} with git checkout, or {REBUILD}")
        finish_suite(tmp, root, config, {**manifest["report"], "source": "shipped"})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def kept_teacher(config: SuiteConfig, data: dict[str, list[dict[str, Any]]]) -> KeptTeacher:
    """The shipped tokenizer and teacher for a build of ``config`` that keeps them, refused in one line
    unless they were trained from the inputs this build would train them from."""
    folder = shipped_folder(config)
    if folder is None:
        raise UserError(f"suite {config.name!r} ships no teacher to keep: build it with --from-scratch alone")
    manifest = read_manifest(folder)
    shipped_inputs = teacher_inputs(suite_config_from_dict(manifest["config"]), manifest["data"])
    if {**shipped_inputs, "code": manifest.get("teacher_code")} != teacher_inputs(config, data_digests(data)):
        raise UserError(f"the shipped teacher of suite {config.name!r} was trained from other inputs than this "
                        "code's (its data, vocabulary, shape, training or TEACHER_CODE_VERSION changed): "
                        "build it with --from-scratch alone")
    return KeptTeacher(folder, manifest["report"]["teacher_train"])


def build_from_scratch(config: SuiteConfig, keep_teacher: bool = False) -> dict[str, Any]:
    """Train ``config``'s suite on this machine (beside the cache, never used by runs) and compare it
    with the shipped one: weight digests and each stage's best validation score. ``keep_teacher``
    trains only the SFT init, on the shipped tokenizer and teacher, where their inputs are unchanged."""
    kept = kept_teacher(config, suite_data(config)) if keep_teacher else None
    root = cache_root() / f"{config.key()}.scratch"
    shutil.rmtree(root, ignore_errors=True)
    build_suite(config, root, kept)
    built = json.loads((root / "suite.json").read_text())["report"]
    mine = {name: weights_digest(root / name) for name in ("teacher", "student-init")}
    folder = shipped_folder(config)
    comparison: dict[str, Any] = {"root": str(root), "weights": mine, "report": built}
    if folder is not None:
        manifest = read_manifest(folder)
        comparison["shipped"] = {"key": manifest["key"], "weights": manifest["weights"],
                                 **{stage: manifest["report"][stage] for stage in ("teacher_train", "student_init_train")}}
    return comparison


def ship(config: SuiteConfig, root: Path) -> Path:
    """Make the suite built at ``root`` the shipped one of ``config.name`` (files and manifest)."""
    report = json.loads((root / "suite.json").read_text())["report"]
    data = {path.stem: read_records(path) for path in sorted((root / "data").glob("*.jsonl"))}
    folder = SHIPPED / config.name
    shutil.rmtree(folder, ignore_errors=True)
    for name in MODELS:
        shutil.copytree(root / name, folder / name)
    manifest = {"name": config.name, "key": config.key(), "teacher_code": TEACHER_CODE_VERSION,
                "config": dataclasses.asdict(config),
                "data": data_digests(data),
                "weights": {name: weights_digest(root / name) for name in ("teacher", "student-init")},
                "report": report,
                "built_on": {"machine": platform.machine(), "processor": platform.processor(),
                             "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}}
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return folder
