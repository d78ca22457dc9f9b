"""The commands that score saved models: ``eval`` (a run record per model) and ``agreement``
(teacher-forced figures against the teacher).

Models are named as folders, ``train`` or ``run`` output folders, or Hub names
(:func:`models_to_evaluate`); every request is checked, and its data read, before a model loads.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from mgsr_bench.errors import UserError
from mgsr_bench.outputs import (check_output_file, check_output_folder, check_plain_name, kept_only_if_written,
                                make_output_folder, sweep_stale)
from mgsr_bench.pipeline import (check_lm_eval_tasks, eval_settings, evaluate_and_record, lm_eval_scores,
                                 refuse_several_processes, suite_config)
from mgsr_bench.requests import AgreementRequest, EvalRequest


def models_to_evaluate(names: tuple[str, ...] | list[str], label: str | None) -> list[tuple[str, str]]:
    """(label, model path or Hub name) per model: a model folder; a `train` run folder (its `model/`);
    a `run` folder (each of its `models/*`); anything else is taken as a Hub name."""
    found: list[tuple[str, str]] = []
    for name in names:
        path = Path(name)
        if (path / "config.json").is_file():
            found.append((path.parent.name if path.name == "model" else path.name, name))
        elif (path / "model" / "config.json").is_file():
            found.append((path.name, str(path / "model")))
        elif path.is_dir() and sorted(path.glob("models/*/config.json")):
            found += [(c.parent.name, str(c.parent)) for c in sorted(path.glob("models/*/config.json"))]
        elif path.exists():
            raise UserError(f"{name} holds no model (config.json), train run (model/) or run (models/*/)")
        else:
            found.append((name.rstrip("/").split("/")[-1], name))
    if label is not None:
        if len(found) != 1:
            raise UserError("--label names one model's record: pass one model, or drop --label")
        check_plain_name(label, "--label")  # it names OUT/records/LABEL.json
        found = [(label, found[0][1])]
    labels = [lab for lab, _ in found]
    clash = sorted({lab for lab in labels if labels.count(lab) > 1})
    if clash:
        raise UserError(f"two models would write the same record ({', '.join(clash)}); evaluate them into "
                        "different --out folders")
    return found


def training_of(model_path: str) -> dict[str, Any] | None:
    """The training summary of a ``train`` run's model (``training.json`` beside its ``model/``: the
    seed, history and cost), which its record keeps; None for any other model."""
    path = Path(model_path)
    summary = path.parent / "training.json"
    if path.name != "model" or not summary.is_file():
        return None
    try:
        return json.loads(summary.read_text(encoding="utf-8"))["training"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{summary} is damaged (not a training summary): restore it, or evaluate a copy of the "
                        "model folder without it") from None


def _protocol_tokenizer(name_or_path: str) -> Any:
    """The tokenizer the protocol's filters count with, refused in one line naming the fix."""
    from mgsr_bench.models import load_tokenizer

    try:
        return load_tokenizer(name_or_path)
    except UserError as e:
        raise UserError(f"the protocol's filters (SelfInst, S-NI, UnNI) count tokens with GPT-2's tokenizer: {e}; "
                        "pass --protocol-tokenizer PATH to a local copy of it") from None


def _named_datasets(specs: tuple[str, ...], protocol_tokenizer: str) -> dict[str, list[dict[str, Any]]]:
    """``NAME=PATH`` datasets, read in any layout :func:`load_instruct` knows; a protocol set's filters
    applied (counting tokens with ``protocol_tokenizer`` where they count tokens); a warning on stderr
    for references the protocol's scoring would mishandle."""
    from mgsr_bench.data.instruct import PROTOCOLS, apply_protocol, load_instruct, reference_warning

    datasets = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--data takes NAME=PATH, got {spec!r}")
        check_plain_name(name, f"--data {spec!r}: the dataset name")  # it names cache files under --out
        if name in datasets:
            raise UserError(f"--data names the dataset {name!r} twice: give each dataset its own name")
        datasets[name] = load_instruct(path)
    for name, rows in datasets.items():
        warning = reference_warning(name, rows)
        if warning:
            print(warning, file=sys.stderr)
    if any(PROTOCOLS[name].counts_tokens for name in datasets if name in PROTOCOLS):
        tokenizer = _protocol_tokenizer(protocol_tokenizer)
        datasets = {name: apply_protocol(rows, name, tokenizer) if name in PROTOCOLS else rows
                    for name, rows in datasets.items()}
    return datasets


def evaluate_models(request: EvalRequest, on_record: Callable[[str, dict[str, Any]], None]) -> None:
    """Score each model on the request's datasets (the tiny suite's splits when it names none) and
    write its run record into ``out/records``; ``on_record`` gets each (label, record) as it is written."""
    import torch

    from mgsr_bench.models import load_model, load_tokenizer, on_compute_device
    from mgsr_bench.suite.build import EVAL_SPLITS, ensure_suite

    refuse_several_processes("eval runs in one process (under a launcher every process would evaluate every "
                             "model again): run `mgsr-bench eval ...` without accelerate launch or torchrun")
    if request.data:
        datasets = _named_datasets(request.data, request.protocol_tokenizer)
    settings = eval_settings(request.evaluation, None if request.data else suite_config(request.quick))
    pair_info: dict[str, Any] = {}
    if request.pair:
        from mgsr_bench.models.pairs import get_pair

        pair = get_pair(request.pair)
        settings.add_bos = settings.add_bos or pair.eval_bos
        pair_info = {"name": pair.name, "teacher": pair.teacher, "reference": pair.reference}
    models = models_to_evaluate(request.models, request.label)
    trainings = {label: training_of(path) for label, path in models}  # a damaged summary: refused before any model
    check_output_folder(request.out)
    check_lm_eval_tasks(request.evaluation, tiny_suite=not request.data)
    # every model's tokenizer before the suite, whose first build trains a teacher: a missing model fails first
    tokenizers = {label: load_tokenizer(path, request.trust_remote_code) for label, path in models}
    suite_data = None
    if not request.data:
        suite = ensure_suite(suite_config(request.quick))
        datasets = {split: suite.split(split) for split in EVAL_SPLITS}
        suite_data = suite.root / "data"
    out = Path(request.out)
    sweep_stale(out)
    for label, model_path in models:
        t0 = time.perf_counter()
        tokenizer = tokenizers[label]
        model = on_compute_device(load_model(model_path, getattr(torch, request.dtype),
                                             trust_remote_code=request.trust_remote_code))
        with kept_only_if_written(out):  # a setting refused once the model is there leaves no empty folder
            make_output_folder(out)
            record = evaluate_and_record(model, tokenizer, label=label, method="eval", datasets=datasets,
                                         settings=settings, pair={**pair_info, "student": str(model_path)},
                                         config={"model": str(model_path), "dtype": request.dtype},
                                         record_path=out / "records" / f"{label}.json", started=t0,
                                         training=trainings[label],
                                         lm_eval=lm_eval_scores(request.evaluation, model, tokenizer, suite_data))
        on_record(label, record)


@dataclasses.dataclass(frozen=True)
class AgreementResult:
    """The figures of one ``agreement`` request: a row per model, the teacher's first."""

    references: int
    tokens: int  # response tokens scored, the same for every model
    table: Any  # pandas DataFrame indexed by model, token means per figure


def _agreement_references(request: AgreementRequest) -> tuple[list[dict[str, Any]], Any, Any]:
    """The references to score, the teacher and the tokenizer (the tiny suite's where the request
    names none), the references cut to ``family`` and ``limit``."""
    from mgsr_bench.data.instruct import load_instruct
    from mgsr_bench.suite.build import ensure_suite

    records = load_instruct(request.data) if request.data else None
    teacher_path = tokenizer_path = request.teacher
    if request.teacher is None or records is None:
        suite = ensure_suite(suite_config(request.quick))
        if request.teacher is None:
            teacher_path, tokenizer_path = suite.teacher_dir, suite.tokenizer_dir
        if records is None:
            records = suite.split(request.split)
    if request.family is not None:
        families = sorted({r.get("family", "") for r in records} - {""})
        records = [r for r in records if r.get("family") == request.family]
        if not records:
            raise UserError(f"no reference of family {request.family!r}; these references' families: "
                            f"{', '.join(families) or 'none'}")
    return records[: request.limit], teacher_path, tokenizer_path


def _check_agreement(request: AgreementRequest) -> list[tuple[str, str]]:
    """The request's options and output file checked; the models to score."""
    if not 0 < request.threshold < 1:
        raise UserError(f"--threshold must be in (0, 1), got {request.threshold}")
    for flag, value in (("--limit", request.limit), ("--batch-size", request.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if request.output:
        check_output_file(request.output, "--output")
    models = models_to_evaluate(request.models, None)
    if any(label == "teacher" for label, _ in models):
        raise UserError("a model labelled 'teacher' would take the teacher's row (the teacher is always scored): "
                        "pass it under another folder name")
    return models


def agreement_table(request: AgreementRequest) -> AgreementResult:
    """Teacher-forced on the references, where each model (and the teacher, as the floor) puts its
    probability; the figures are also written as JSON to ``output`` when the request names one."""
    import pandas as pd
    import torch

    from mgsr_bench.data.collate import tokenize_records
    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.eval.agreement import agreement
    from mgsr_bench.models import (check_same_vocabulary, check_vocabulary_fits, load_model, load_tokenizer,
                                   on_compute_device)

    models = _check_agreement(request)
    records, teacher_path, tokenizer_path = _agreement_references(request)
    trust, threshold, batch_size = request.trust_remote_code, request.threshold, request.batch_size
    tokenizer = load_tokenizer(tokenizer_path, trust)
    for _, path in models:
        check_same_vocabulary(tokenizer, load_tokenizer(path, trust))
    dtype = getattr(torch, request.dtype)
    teacher = on_compute_device(load_model(teacher_path, dtype, trust_remote_code=trust))
    check_vocabulary_fits(teacher, tokenizer, "teacher")
    examples = tokenize_records(records, tokenizer)
    rows = {"teacher": agreement(teacher, teacher, examples, len(tokenizer), tokenizer.pad_token_id, threshold,
                                 batch_size)}
    for label, path in models:
        model = on_compute_device(load_model(path, dtype, trust_remote_code=trust))
        check_vocabulary_fits(model, tokenizer, label)
        rows[label] = agreement(model, teacher, examples, len(tokenizer), tokenizer.pad_token_id, threshold,
                                batch_size)
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    tokens = int(frame.pop("tokens").iloc[0])
    if request.output:
        write_atomic(request.output, json.dumps({"threshold": threshold, "family": request.family,
                                                 "references": len(examples),
                                                 "tokens": tokens, "models": rows}, indent=2) + "\n")
    return AgreementResult(len(examples), tokens, frame)
