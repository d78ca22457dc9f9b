"""The ``mgsr-bench`` command line: run, train, eval, agreement, leaderboard, compare, history, plan, bench,
list."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from mgsr_bench.cli.outputs import check_output_file, check_output_folder, make_output_folder
from mgsr_bench.cli.parsing import OneLineParser, finite_float, iso_date, train_seeds
from mgsr_bench.errors import UserError
from mgsr_bench.signals import sigterm_as_exit
from mgsr_bench.config import DEFAULT_SEEDS, PROTOCOL_TOKENIZER

if TYPE_CHECKING:  # the commands import the heavy modules when they run
    from mgsr_bench.config import Recipe
    from mgsr_bench.pipeline import SeededRun

DEFAULT_METHODS = "sft,kd"
CHECKPOINT_EVERY = 100  # steps between the checkpoints run and train write when the recipe sets none


def _suite_config(quick: bool):
    from mgsr_bench.suite.build import SUITES

    return SUITES["tiny-quick" if quick else "tiny"]


def _load_recipes(names: str):
    from mgsr_bench.config import load_recipe

    recipes = [load_recipe(n.strip()) for n in names.split(",") if n.strip()]
    if not recipes:
        raise UserError("--methods must name at least one recipe (see `mgsr-bench list recipes`)")
    return recipes


def _apply_sets(recipes: list, sets: list[str] | None) -> list:
    """``--set KEY=VALUE`` (YAML value) overrides a method option in every recipe whose method has it."""
    if not sets:
        return recipes
    import dataclasses
    import inspect

    import yaml

    from mgsr_bench.methods import available_methods, get_method

    methods = available_methods()
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        value = yaml.safe_load(text)
        takers = [r for r in recipes if r.method in methods
                  and key.strip() in inspect.signature(methods[r.method].__init__).parameters]
        if not takers:
            raise UserError(f"--set {key.strip()}: no chosen recipe's method has that option "
                            "(see the recipes' options: block)")
        recipes = [dataclasses.replace(r, options={**r.options, key.strip(): value}) if r in takers else r
                   for r in recipes]
    for recipe in recipes:  # an out-of-range value fails here, before any compute
        get_method(recipe.method, **recipe.options)
    return recipes


def _eval_settings(args: argparse.Namespace, suite_config=None):
    """The protocol's settings; the tiny suite's own (its max_new_tokens, no n-gram ban) for its splits."""
    from mgsr_bench.eval.generate import EvalSettings
    from mgsr_bench.pipeline import parse_seeds

    settings = EvalSettings(seeds=parse_seeds(args.seeds), greedy=args.greedy, batch_size=args.eval_batch_size,
                            temperature=args.temperature, max_length=args.max_length, max_prompt=args.max_prompt,
                            add_bos=args.bos)
    if suite_config is not None:
        settings.max_new_tokens = suite_config.max_new_tokens
        settings.no_repeat_ngram_size = suite_config.no_repeat_ngram_size
    if args.max_new_tokens is not None:
        settings.max_new_tokens = args.max_new_tokens
    if args.no_repeat_ngram_size is not None:
        settings.no_repeat_ngram_size = args.no_repeat_ngram_size
    settings.validate()
    return settings


def _processes() -> int:
    """How many processes this run was launched on (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _refuse_several_processes(message: str) -> None:
    """The commands that run in one process stop, with ``message``, when launched on several."""
    if _processes() > 1:
        raise UserError(message)


@dataclasses.dataclass
class _RunJob:
    """What every student of one ``run`` shares: the suite's models and data, the settings, where
    its records, models and checkpoints go."""

    args: argparse.Namespace
    out: Path
    suite: Any
    tokenizer: Any
    teacher: Any
    datasets: dict[str, list[dict[str, Any]]]
    settings: Any
    train_defaults: dict[str, Any]
    overrides: dict[str, Any]
    pair: dict[str, Any] = dataclasses.field(init=False)
    train_records: list[dict[str, Any]] = dataclasses.field(init=False)
    valid_records: list[dict[str, Any]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.pair = self.suite.pair()  # hashes both models' weights: once
        self.train_records, self.valid_records = self.suite.split("train"), self.suite.split("valid")

    @property
    def suite_info(self) -> dict[str, Any]:
        return {"suite": self.suite.config.key()}


def cmd_run(args: argparse.Namespace) -> int:
    """Build or reuse the tiny suite, train each recipe's student (once per --train-seeds seed),
    evaluate all, print the leaderboard."""
    from mgsr_bench.models import on_compute_device
    from mgsr_bench.pipeline import evaluate_and_record, finished, resolve_recipe, seeded_runs
    from mgsr_bench.results import load_records
    from mgsr_bench.results.publish import write_leaderboard
    from mgsr_bench.results.record import record_group
    from mgsr_bench.suite.build import EVAL_SPLITS, ensure_suite, load_suite_models

    _refuse_several_processes("run is the single-process tiny-suite job; launch `train` on several processes "
                              "instead (accelerate launch -m mgsr_bench train ..., docs/scale.md)")
    suite_config = _suite_config(args.quick)
    recipes = _apply_sets(_load_recipes(args.methods), args.set)
    seeds = train_seeds(args.train_seeds)
    settings = _eval_settings(args, suite_config)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    overrides: dict[str, Any] = {"steps": args.steps} if args.steps is not None else {}
    if args.deterministic:
        overrides["deterministic"] = True
    if args.lm_eval:
        from mgsr_bench.eval.lm_harness import check_tasks

        check_tasks(args.lm_eval.split(","), tiny_suite=True)
    train_defaults = {"checkpoint_every": CHECKPOINT_EVERY, **suite_config.method_train}  # a recipe's own wins
    runs = [(recipe, run) for recipe in recipes for run in
            seeded_runs(recipe.name, resolve_recipe(recipe, train_defaults, overrides)[0].seed, seeds)]
    out = Path(args.out)
    make_output_folder(out)

    suite = ensure_suite(suite_config)
    tokenizer, teacher = load_suite_models(suite)
    teacher = on_compute_device(teacher)  # where the students train and are scored
    datasets = {split: suite.split(split) for split in EVAL_SPLITS}
    job = _RunJob(args, out, suite, tokenizer, teacher, datasets, settings, train_defaults, overrides)

    t0 = time.perf_counter()
    if finished(out / "records" / "teacher.json", job.suite_info, settings, bool(args.lm_eval), job.pair):
        print("teacher: a record of this evaluation is already there; kept")
    else:
        evaluate_and_record(teacher, tokenizer, label="teacher", method="teacher", datasets=datasets,
                            settings=settings, pair=job.pair, config=job.suite_info,
                            record_path=out / "records" / "teacher.json", training=suite.report["teacher_train"],
                            started=t0, lm_eval=_lm_eval(args, teacher, tokenizer, suite.root / "data"))
    for recipe, run in runs:
        _run_student(job, recipe, run)

    records = load_records(out / "records")
    write_leaderboard(records, out, reference="sft" if any(record_group(r) == "sft" for r in records) else None)
    table = (out / "leaderboard.md").read_text(encoding="utf-8")
    print(f"\nTiny suite {suite.config.key()}: teacher {suite.report['teacher_params'] / 1e6:.2f}M params, "
          f"student {suite.report['student_params'] / 1e6:.2f}M params; splits: test (in-domain), "
          f"shifted (held-out templates and entities)\n")
    print(table)
    print(f"records, models and tables written under {out}/")
    return 0


def _run_student(job: _RunJob, recipe: Recipe, run: SeededRun) -> None:
    """Train, save and score one recipe at one training seed, unless a record of exactly this run
    is already there; a killed run resumes from its checkpoints."""
    from mgsr_bench.models import load_model
    from mgsr_bench.pipeline import evaluate_and_record, finished, resolve_recipe, save_model_atomic, train_student

    t0 = time.perf_counter()
    out, suite, pair = job.out, job.suite, job.pair
    overrides = run.overrides(job.overrides)
    planned = {**job.suite_info, **resolve_recipe(recipe, job.train_defaults, overrides)[2]}
    record_path = out / "records" / f"{run.label}.json"
    if (out / "models" / run.label / "config.json").exists() and finished(
            record_path, planned, job.settings, bool(job.args.lm_eval), pair):
        print(f"{run.label}: a record of this exact run is already there; kept (delete it to redo)")
        return
    student = load_model(suite.student_init_dir)
    checkpoints = out / "checkpoints" / run.label  # a killed run re-run with the same command resumes here
    config, summary, method_state, student = train_student(recipe, student, job.teacher, job.tokenizer,
                                                           job.train_records, job.valid_records,
                                                           job.train_defaults, overrides, checkpoints)
    save_model_atomic(student, job.tokenizer, out / "models" / run.label, method_state)
    evaluate_and_record(student, job.tokenizer, label=run.label, group=run.group, method=recipe.method,
                        datasets=job.datasets, settings=job.settings, pair=pair,
                        config={**job.suite_info, **config}, record_path=record_path, training=summary, started=t0,
                        lm_eval=_lm_eval(job.args, student, job.tokenizer, suite.root / "data"))
    shutil.rmtree(checkpoints, ignore_errors=True)  # spent only once the record exists


def _is_main_process() -> bool:
    """Rank 0 of a multi-process launch (torchrun and accelerate set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclasses.dataclass
class _TrainPlan:
    """The settings of one ``train`` command's runs (one per training seed)."""

    recipe: Recipe
    defaults: dict[str, Any]
    overrides: dict[str, Any]
    pair: Any  # the registered pair (``--pair``), or None

    def config(self, run: SeededRun) -> dict[str, Any]:
        """The config ``training.json`` records for ``run``."""
        from mgsr_bench.pipeline import resolve_recipe

        config = resolve_recipe(self.recipe, self.defaults, run.overrides(self.overrides))[2]
        return {**config, "pair": self.pair.name} if self.pair is not None else config


@dataclasses.dataclass
class _TrainJob:
    """What the runs of one ``train`` share: the settings, the models' paths and the data."""

    plan: _TrainPlan
    teacher_path: str | Path
    student_path: str | Path
    tokenizer: Any
    train_records: list[dict[str, Any]]
    valid_records: list[dict[str, Any]]
    custom: bool  # models and data named on the command line, else the tiny suite's
    trust_remote_code: bool


def cmd_train(args: argparse.Namespace) -> int:
    """Train one student with one recipe (with several --train-seeds, one run per seed, each into
    OUT@seedN); defaults to the tiny suite's pair and data."""
    from mgsr_bench.config import load_recipe
    from mgsr_bench.data.jsonl import read_records
    from mgsr_bench.models import check_same_vocabulary, load_tokenizer
    from mgsr_bench.pipeline import resolve_recipe, seeded_runs
    from mgsr_bench.suite.build import ensure_suite
    from mgsr_bench.train.distributed import check_fsdp_accelerate, check_lora_launch, deepspeed_launch, end_processes

    check_fsdp_accelerate()  # before a model loads: a 13B teacher takes minutes
    recipe = load_recipe(args.recipe)
    out = Path(args.out or f"runs/train-{recipe.name}")
    seeds = train_seeds(args.train_seeds)
    if seeds is not None and len(seeds) > 1 and (_processes() > 1 or deepspeed_launch()):
        raise UserError("train runs several --train-seeds one after another in one process; under a launcher "
                        "give one seed per launch (--train-seeds N)")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    pair = None
    if args.pair:
        from mgsr_bench.models.pairs import get_pair

        if args.teacher or args.student:
            raise UserError("--pair names the teacher and student: drop --teacher/--student")
        pair = get_pair(args.pair)
        if pair.finetune == "lora":
            check_lora_launch()
        if pair.teacher != "tiny":
            args.teacher, args.student = pair.teacher, pair.student
    custom = [args.teacher, args.student, args.train_data, args.valid_data]
    if any(custom) and not all(custom):
        raise UserError("--teacher, --student (or --pair), --train-data and --valid-data go together "
                        "(or none: the tiny suite)")
    defaults: dict[str, Any] = {} if all(custom) else dict(_suite_config(args.quick).method_train)
    if pair is not None:
        defaults = {**defaults, "micro_batch": pair.micro_batch, "grad_accum": pair.grad_accum,
                    "gradient_checkpointing": pair.gradient_checkpointing}
    overrides: dict[str, Any] = {"steps": args.steps} if args.steps is not None else {}
    if args.deterministic:
        overrides["deterministic"] = True
    defaults = {"checkpoint_every": CHECKPOINT_EVERY, **defaults}  # a recipe's own wins, --checkpoint-every over it
    if args.checkpoint_every is not None:
        overrides["checkpoint_every"] = args.checkpoint_every
    plan = _TrainPlan(recipe, defaults, overrides, pair)
    runs = seeded_runs(out.name, resolve_recipe(recipe, defaults, overrides)[0].seed, seeds)
    if len(runs) > 1 and out.name in ("", ".", ".."):
        raise UserError(f"--out {out} names no folder: with several --train-seeds each seed's run goes to "
                        "NAME@seedN beside OUT, so give OUT a name (e.g. --out runs/kd)")
    folders = [out if run.label == out.name else out.with_name(run.label) for run in runs]
    for folder in folders:
        check_output_folder(folder)  # now, before minutes of loading; made once the inputs have been read
    if len(runs) == 1 and (out / "training.json").exists():
        raise UserError(f"{out} holds a finished run (training.json); choose another --out")
    todo = [(run, folder) for run, folder in zip(runs, folders)
            if len(runs) == 1 or not _finished_seed(plan, run, folder)]
    trust = args.trust_remote_code
    if all(custom):
        train_records, valid_records = read_records(args.train_data), read_records(args.valid_data)
        tokenizer, student_tok = load_tokenizer(args.teacher, trust), load_tokenizer(args.student, trust)
        check_same_vocabulary(tokenizer, student_tok)
        teacher_path, student_path = args.teacher, args.student
    else:
        for _, folder in todo:
            make_output_folder(folder)
        suite = ensure_suite(_suite_config(args.quick))
        tokenizer = load_tokenizer(suite.tokenizer_dir)
        teacher_path, student_path = suite.teacher_dir, suite.student_init_dir
        train_records, valid_records = suite.split("train"), suite.split("valid")
    job = _TrainJob(plan, teacher_path, student_path, tokenizer, train_records, valid_records, bool(all(custom)), trust)
    for run, folder in todo:
        _train_run(job, run, folder)
    end_processes()
    return 0


def _finished_seed(plan: _TrainPlan, run: SeededRun, folder: Path) -> bool:
    """Whether ``folder`` holds this seed's finished run, so that the same command run again after
    a kill skips it (and says so); a finished run of other settings there is refused."""
    path = folder / "training.json"
    if not path.exists():
        return False
    if json.loads(path.read_text(encoding="utf-8")).get("config") != json.loads(json.dumps(plan.config(run))):
        raise UserError(f"{folder} holds a finished run of other settings (training.json); choose another --out")
    print(f"{folder}: this seed's run is already finished there (training.json); kept")
    return True


def _train_run(job: _TrainJob, run: SeededRun, folder: Path) -> None:
    """Load the models, train one student at ``run``'s seed and, on the main process, save it and its
    ``training.json`` into ``folder`` (its checkpoints in ``folder/checkpoints``, resumed after a kill)."""
    import torch

    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.models import check_vocabulary_fits
    from mgsr_bench.pipeline import resolve_recipe, save_model_atomic, train_student
    from mgsr_bench.train.distributed import deepspeed_launch, load_models
    from mgsr_bench.train.loop import make_accelerator

    plan = job.plan
    overrides = run.overrides(plan.overrides)
    cfg = resolve_recipe(plan.recipe, plan.defaults, overrides)[0]
    # under DeepSpeed the engine comes up first: ZeRO-3's zero3_init_flag partitions the models as they load
    accelerator = make_accelerator(cfg) if deepspeed_launch() else None
    teacher_dtype = getattr(torch, plan.pair.dtype) if plan.pair is not None and job.custom else torch.float32
    teacher, student = load_models(job.teacher_path, job.student_path, accelerator, shard_teacher=cfg.shard_teacher,
                                   teacher_dtype=teacher_dtype, trust_remote_code=job.trust_remote_code)
    if job.custom:
        check_vocabulary_fits(teacher, job.tokenizer, "teacher")
        check_vocabulary_fits(student, job.tokenizer, "student")
        make_output_folder(folder)
    if plan.pair is not None and plan.pair.finetune == "lora":
        from mgsr_bench.models.lora import apply_lora

        student = apply_lora(student, plan.pair.lora, cfg.seed)
    config, summary, method_state, student = train_student(plan.recipe, student, teacher, job.tokenizer,
                                                           job.train_records, job.valid_records, plan.defaults,
                                                           overrides, checkpoint_dir=folder / "checkpoints",
                                                           accelerator=accelerator)
    if _is_main_process():  # under torchrun / accelerate launch the main process writes the results
        if plan.pair is not None:
            config["pair"] = plan.pair.name
        save_model_atomic(student, job.tokenizer, folder / "model", method_state)
        write_atomic(folder / "training.json", json.dumps({"config": config, "training": summary}, indent=2))
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the run is complete: its checkpoints are spent
        print(f"best validation {summary['best_val']:.3f} (on {summary['val_examples']} records) at step "
              f"{summary['best_step']}; model saved to {folder / 'model'}")


def _protocol_tokenizer(name_or_path: str):
    """The tokenizer the protocol's filters count with, refused in one line naming the fix."""
    from mgsr_bench.models import load_tokenizer

    try:
        return load_tokenizer(name_or_path)
    except UserError as e:
        raise UserError(f"the protocol's filters (SelfInst, S-NI, UnNI) count tokens with GPT-2's tokenizer: {e}; "
                        "pass --protocol-tokenizer PATH to a local copy of it") from None


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate saved models (folders or Hub names) and write one run record each.

    ``--data NAME=PATH`` reads any layout :func:`load_instruct` knows (MiniLLM JSONL, plain JSONL,
    raw self-instruct, Unnatural Instructions and natural-instructions files, FastChat's
    ``QUESTIONS+ANSWERS``); when NAME is one of the protocol's sets (dolly, selfinst, vicuna, sni,
    unni) its filters are applied, counting tokens with GPT-2's tokenizer as MiniLLM's data scripts
    did (``--protocol-tokenizer``), so that every model is scored on the same examples. ``--pair``
    follows that pair's reference on the BOS. Each model is loaded in ``--dtype`` and scored on the
    machine's GPU when it has one (``CUDA_VISIBLE_DEVICES=``: the CPU).
    """
    import torch

    from mgsr_bench.data.instruct import PROTOCOLS, apply_protocol, load_instruct, reference_warning
    from mgsr_bench.models import load_model, load_tokenizer, on_compute_device
    from mgsr_bench.pipeline import evaluate_and_record
    from mgsr_bench.suite.build import EVAL_SPLITS, ensure_suite

    _refuse_several_processes("eval runs in one process (under a launcher every process would evaluate every "
                              "model again): run `mgsr-bench eval ...` without accelerate launch or torchrun")
    if args.data:
        datasets = {}
        for spec in args.data:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise UserError(f"--data takes NAME=PATH, got {spec!r}")
            if name in datasets:
                raise UserError(f"--data names the dataset {name!r} twice: give each dataset its own name")
            datasets[name] = load_instruct(path)
        for name, rows in datasets.items():
            warning = reference_warning(name, rows)
            if warning:
                print(warning, file=sys.stderr)
        if any(PROTOCOLS[name].counts_tokens for name in datasets if name in PROTOCOLS):
            protocol_tokenizer = _protocol_tokenizer(args.protocol_tokenizer)
            datasets = {name: apply_protocol(rows, name, protocol_tokenizer) if name in PROTOCOLS else rows
                        for name, rows in datasets.items()}
    settings = _eval_settings(args, None if args.data else _suite_config(args.quick))
    pair_info: dict[str, Any] = {}
    if args.pair:
        from mgsr_bench.models.pairs import get_pair

        pair = get_pair(args.pair)
        settings.add_bos = settings.add_bos or pair.eval_bos
        pair_info = {"name": pair.name, "teacher": pair.teacher, "reference": pair.reference}
    models = _models_to_evaluate(args.models, args.label)
    check_output_folder(args.out)
    if args.lm_eval:
        from mgsr_bench.eval.lm_harness import check_tasks

        check_tasks(args.lm_eval.split(","), tiny_suite=not args.data)
    suite_data = None
    if not args.data:
        suite = ensure_suite(_suite_config(args.quick))
        datasets = {split: suite.split(split) for split in EVAL_SPLITS}
        suite_data = suite.root / "data"
    out = Path(args.out)
    for label, model_path in models:
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(model_path, args.trust_remote_code)
        model = on_compute_device(load_model(model_path, getattr(torch, args.dtype),
                                             trust_remote_code=args.trust_remote_code))
        make_output_folder(out)  # once a model has loaded: a refused model leaves no empty folder
        record = evaluate_and_record(model, tokenizer, label=label, method="eval", datasets=datasets, settings=settings,
                                     pair={**pair_info, "student": str(model_path)},
                                     config={"model": str(model_path), "dtype": args.dtype},
                                     record_path=out / "records" / f"{label}.json", started=t0,
                                     lm_eval=_lm_eval(args, model, tokenizer, suite_data))
        print(f"{label}: " + ", ".join(f"{name} ROUGE-L {s['rougeL']['mean']:.2f} ± {s['rougeL']['std']:.2f}"
                                       for name, s in record["scores"].items()))
        for task, metrics in (record.get("lm_eval") or {}).items():
            print(f"  lm-eval {task}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0


def cmd_agreement(args: argparse.Namespace) -> int:
    """Teacher-forced on reference responses, where each model puts its probability: its mass on
    tokens the teacher rules out, its entropy, both KLs to the teacher, the references' NLL and top-1
    agreement (token means; docs/evaluation.md). Models as for ``eval``; the teacher is scored too,
    as the floor. Defaults: the tiny suite's teacher and its ``test`` split."""
    import pandas as pd
    import torch

    from mgsr_bench.data.collate import tokenize_records
    from mgsr_bench.data.instruct import load_instruct
    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.eval.agreement import agreement
    from mgsr_bench.models import (check_same_vocabulary, check_vocabulary_fits, load_model, load_tokenizer,
                                   on_compute_device)
    from mgsr_bench.suite.build import ensure_suite

    if not 0 < args.threshold < 1:
        raise UserError(f"--threshold must be in (0, 1), got {args.threshold}")
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.output:
        check_output_file(args.output, "--output")
    models = _models_to_evaluate(args.models, None)
    if any(label == "teacher" for label, _ in models):
        raise UserError("a model labelled 'teacher' would take the teacher's row (the teacher is always scored): "
                        "pass it under another folder name")
    records = load_instruct(args.data) if args.data else None
    teacher_path = tokenizer_path = args.teacher
    if args.teacher is None or records is None:
        suite = ensure_suite(_suite_config(args.quick))
        if args.teacher is None:
            teacher_path, tokenizer_path = suite.teacher_dir, suite.tokenizer_dir
        if records is None:
            records = suite.split(args.split)
    if args.family is not None:
        families = sorted({r.get("family", "") for r in records} - {""})
        records = [r for r in records if r.get("family") == args.family]
        if not records:
            raise UserError(f"no reference of family {args.family!r}; these references' families: "
                            f"{', '.join(families) or 'none'}")
    records = records[: args.limit]
    tokenizer = load_tokenizer(tokenizer_path, args.trust_remote_code)
    for _, path in models:
        check_same_vocabulary(tokenizer, load_tokenizer(path, args.trust_remote_code))
    dtype = getattr(torch, args.dtype)
    teacher = on_compute_device(load_model(teacher_path, dtype, trust_remote_code=args.trust_remote_code))
    check_vocabulary_fits(teacher, tokenizer, "teacher")
    examples = tokenize_records(records, tokenizer)
    rows = {"teacher": agreement(teacher, teacher, examples, len(tokenizer), tokenizer.pad_token_id,
                                 args.threshold, args.batch_size)}
    for label, path in models:
        model = on_compute_device(load_model(path, dtype, trust_remote_code=args.trust_remote_code))
        check_vocabulary_fits(model, tokenizer, label)
        rows[label] = agreement(model, teacher, examples, len(tokenizer), tokenizer.pad_token_id, args.threshold,
                                args.batch_size)
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    tokens = int(frame.pop("tokens").iloc[0])
    print(f"{len(examples)} references, {tokens} response tokens; off_support: mass on tokens the teacher "
          f"gives < {args.threshold:g}\n")
    print(frame.to_markdown(floatfmt=".4f"))
    if args.output:
        write_atomic(args.output, json.dumps({"threshold": args.threshold, "family": args.family,
                                              "references": len(examples),
                                              "tokens": tokens, "models": rows}, indent=2) + "\n")
    return 0


def _models_to_evaluate(names: list[str], label: str | None) -> list[tuple[str, str]]:
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
        if not label or label in (".", "..") or "/" in label or os.sep in label:  # it names OUT/records/LABEL.json
            raise UserError(f"--label must be a plain name (no path separators), got {label!r}")
        found = [(label, found[0][1])]
    labels = [lab for lab, _ in found]
    clash = sorted({lab for lab in labels if labels.count(lab) > 1})
    if clash:
        raise UserError(f"two models would write the same record ({', '.join(clash)}); evaluate them into "
                        "different --out folders")
    return found


def _lm_eval(args: argparse.Namespace, model, tokenizer, suite_data: Path | None) -> dict[str, Any] | None:
    """``--lm-eval`` tasks' scores for one model, or None when none were asked for."""
    if not args.lm_eval:
        return None
    if args.lm_eval_limit is not None and args.lm_eval_limit < 1:
        raise UserError(f"--lm-eval-limit must be >= 1, got {args.lm_eval_limit}")
    from mgsr_bench.eval.lm_harness import run_lm_eval

    return run_lm_eval(model, tokenizer, args.lm_eval.split(","), suite_data, args.lm_eval_limit)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _store_filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"pair": args.pair, "commit": args.commit, "since": args.since, "until": args.until}


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Render the methods x datasets table of the run records under a folder (a results store).

    A row is a label, or a group of several training seeds' records (``METHOD@seedN``: the newest
    record of each seed); cells are mean ± std over sampling seeds, or over training seeds for a
    row of several (the mean of each run's mean). The best measured value of each column is marked,
    ``--reference`` adds each row's difference in average from that row, and ``--reported
    TEACHER->STUDENT`` adds the numbers papers report for that pair (marked, never ranked).
    ``--write DIR`` writes every format and the figures into DIR.
    """
    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.results import load_records, render_leaderboard
    from mgsr_bench.results.leaderboard import select_rows
    from mgsr_bench.results.publish import write_leaderboard
    from mgsr_bench.results.reported import load_reported, reported_rows

    if args.output:
        check_output_file(args.output, "--output")
    if args.write:
        check_output_folder(args.write, "--write")
    reported = None
    if args.reported:
        reported = reported_rows(load_reported(args.reported_file), args.reported)
        if not reported:
            raise UserError(f"{args.reported_file} has no reported rows for pair {args.reported!r}")
    records = load_records(args.folder, **_store_filters(args))
    labels, datasets = _split(args.methods), _split(args.datasets)
    text = render_leaderboard(records, args.format, reference=args.reference, datasets=datasets, labels=labels,
                              reported=reported, metric=args.metric)
    if args.write:
        chosen = select_rows(records, labels)
        for path in write_leaderboard(chosen, args.write, args.metric, args.reference, reported, datasets=datasets):
            print(f"wrote {path}", file=sys.stderr)
    if args.output:
        write_atomic(args.output, text)
    print(text, end="")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare the records under NEW with those under BASE, per row and dataset; exit 1 on a regression.

    A drop is a regression when it exceeds max(--tolerance, --k x the standard error of the difference
    of the two means): over sampling seeds, or over training seeds for a row with several
    (docs/results.md); the report's noise column says which.
    """
    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.results import load_records
    from mgsr_bench.results.compare import compare_records, render_comparison

    if args.tolerance < 0 or args.k < 0:
        raise UserError("--tolerance and --k must be >= 0")
    if args.output:
        check_output_file(args.output, "--output")
    new, base = load_records(args.new), load_records(args.against)
    frame = compare_records(new, base, args.metric, args.tolerance, args.k)
    text = render_comparison(frame, args.metric)
    if args.output:
        write_atomic(args.output, text)
    print(text, end="")
    return 1 if (frame["status"] == "regression").any() else 0


def cmd_history(args: argparse.Namespace) -> int:
    """A metric across commits: every matching record in the store, oldest first."""
    from mgsr_bench.results import load_records
    from mgsr_bench.results.compare import history_frame

    records = load_records(args.folder, methods=None, labels=_split(args.methods), **_store_filters(args))
    frame = history_frame(records, args.metric, args.dataset)
    if frame.empty:
        raise UserError(f"no scores for dataset {args.dataset!r} in the matching records" if args.dataset
                        else "the matching records have no scores")
    print(frame.to_markdown(index=False))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Estimate per-GPU memory of training a registered pair, term by term, and what to change if it does not fit.

    Defaults come from the pair's entry (`mgsr-bench list pairs`); each option overrides one.
    Exit status 1 when the plan does not fit.
    """
    from mgsr_bench.methods import get_method
    from mgsr_bench.models.pairs import get_pair
    from mgsr_bench.train.memory_plan import plan_pair

    pair = get_pair(args.pair)
    get_method(args.method)  # an unknown method is refused here, with the nearest name
    for name in ("gpus", "micro_batch", "seq_len"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.gpu_mem is not None and args.gpu_mem <= 0:
        raise UserError("--gpu-mem must be > 0 (GiB)")
    plan = plan_pair(pair, gpus=args.gpus, gpu_mem_gib=args.gpu_mem, strategy=args.strategy,
                     micro_batch=args.micro_batch, seq_len=args.seq_len, gradient_checkpointing=args.checkpointing,
                     method=args.method)
    print(f"{pair.name}: {pair.teacher} -> {pair.student} ({pair.finetune}, {pair.dtype}), method {args.method}")
    print(plan.render(), end="")
    return 0 if plan.fits else 1


def cmd_list(args: argparse.Namespace) -> int:
    """List registered methods, recipes, model pairs and suites."""
    from mgsr_bench.config import NO_RECIPES, available_recipes, load_recipe
    from mgsr_bench.methods import available_methods
    from mgsr_bench.suite.build import SUITES

    if args.what in ("methods", "all"):
        print("methods:")
        for name, cls in available_methods().items():
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            print(f"  {name:12s} {doc}")
    if args.what in ("recipes", "all"):
        print("recipes:")
        recipes = available_recipes()
        if not recipes:
            print(f"  none found: {NO_RECIPES}")
        for name, path in recipes.items():
            print(f"  {name:12s} {load_recipe(str(path)).description}  ({path})")
    if args.what in ("pairs", "all"):
        from mgsr_bench.models.pairs import load_pairs

        print("pairs:")
        for name, pair in load_pairs().items():
            setup = f"{pair.finetune}, {pair.dtype}, {pair.gpus} GPU(s) x {pair.gpu_mem_gib:g} GiB, {pair.accelerate}"
            print(f"  {name:28s} {pair.teacher} -> {pair.student} ({setup})")
    if args.what in ("suites", "all"):
        print("suites:")
        for name, cfg in SUITES.items():
            print(f"  {name:12s} {cfg.n_train} train examples, cache key {cfg.key()}")
    return 0


def cmd_build_suite(args: argparse.Namespace) -> int:
    """Put the tiny suite into the cache: its shipped tokenizer, teacher and SFT init where the
    package has them (the default suite does), else a build. With --from-scratch, train them on this
    machine beside the cache (runs keep using the shipped ones) and compare them with the shipped
    ones; --keep-teacher trains only the SFT init, on the shipped tokenizer and teacher, where a change
    left their inputs as they were; --ship then makes that build the shipped suite (after a change to
    the suite's code)."""
    from mgsr_bench.suite.build import ensure_suite
    from mgsr_bench.suite.shipped import build_from_scratch, ship

    for flag in ("ship", "keep_teacher"):
        if getattr(args, flag) and not args.from_scratch:
            raise UserError(f"--{flag.replace('_', '-')} is for a build from scratch: add --from-scratch")
    config = _suite_config(args.quick)
    if not args.from_scratch:
        suite = ensure_suite(config)
        pair = suite.pair()
        print(f"suite {config.key()} ({suite.report.get('source', 'built here')}) at {suite.root}: "
              f"teacher {pair['teacher_weights']}, SFT init {pair['student_weights']}")
        return 0
    built = build_from_scratch(config, keep_teacher=args.keep_teacher)
    shipped = built.get("shipped")
    for stage, name in (("teacher_train", "teacher"), ("student_init_train", "student-init")):
        mine = _stage_summary(built["report"][stage], built["weights"][name])
        theirs = _stage_summary(shipped[stage], shipped["weights"][name]) if shipped else "none shipped"
        same = "" if not shipped else (", the same weights" if built["weights"][name] == shipped["weights"][name]
                                       else ", other weights")
        print(f"{name}: this build {mine}; shipped {theirs}{same}")
    if args.ship:
        print(f"shipped into {ship(config, Path(built['root']))}")
    else:
        print(f"this build is in {built['root']} (runs use the shipped suite; --ship replaces it)")
    return 0


def _stage_summary(stage: dict[str, Any], digest: str) -> str:
    metric = next(k for k in stage if k.startswith("best_val_"))
    return f"{digest} ({metric} {stage[metric]:.4g} at step {stage['best_step']})"


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    seeds = ",".join(map(str, DEFAULT_SEEDS))
    p.add_argument("--seeds", default=seeds, help=f"sampling seeds (default: {seeds})")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of the protocol's sampling")
    p.add_argument("--eval-batch-size", type=int, default=64, help="generation batch size (default: 64)")
    p.add_argument("--temperature", type=finite_float, default=1.0, help="sampling temperature (default: 1)")
    p.add_argument("--max-new-tokens", type=int,
                   help="response budget (default: the tiny suite's, 128 or tiny-quick's 64; with --data none "
                        "beyond --max-length)")
    p.add_argument("--max-length", type=int, default=512, help="prompt + response tokens per batch (default: 512)")
    p.add_argument("--max-prompt", type=int, default=256, help="prompts cut to this many tokens (default: 256)")
    p.add_argument("--bos", action="store_true", help="prepend the tokenizer's BOS to prompts (LLaMA-family models)")
    p.add_argument("--no-repeat-ngram-size", type=int,
                   help="n-gram ban over prompt + output (default: the tiny suite's 0; the protocol's 6 with --data)")
    p.add_argument("--lm-eval", metavar="TASKS",
                   help="also run lm-eval tasks (comma-separated names; the tiny suite's: tiny_gen, tiny_mc)")
    p.add_argument("--lm-eval-limit", type=int, help="at most this many documents per lm-eval task")


def _add_train_seeds_option(p: argparse.ArgumentParser, several: str) -> None:
    p.add_argument("--train-seeds", metavar="N,N,...",
                   help="training seeds, one run each (data order, sub-module init, training samples; default: "
                        f"the recipe's seed, else 1). With several seeds or another seed: {several}")


def _add_dtype_option(p: argparse.ArgumentParser, recorded: str = "") -> None:
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help=f"the models' weights' dtype{recorded} (default: float32; bfloat16 halves a large "
                        "model's memory on a GPU)")


def _add_store_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", help="only records of this pair (suite name or TEACHER->STUDENT)")
    p.add_argument("--commit", help="only records written at this commit (prefix)")
    p.add_argument("--since", type=iso_date, help="only records created at or after this ISO date")
    p.add_argument("--until", type=iso_date, help="only records created at or before this ISO date")


def _reported_default() -> Path:
    from mgsr_bench.results.reported import DEFAULT_FILE

    return DEFAULT_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mgsr-bench", description="Benchmark for LLM knowledge distillation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="the main job: tiny suite -> teacher -> students -> evaluation -> table",
                       description=cmd_run.__doc__)
    p.add_argument("--out", default="runs/tiny", help="output folder (default: runs/tiny)")
    p.add_argument("--quick", action="store_true", help="smoke-sized suite and training (about a minute)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated recipes (default: {DEFAULT_METHODS})")
    p.add_argument("--steps", type=int, help="override the training steps of every method")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels on GPU (slower; CPU runs are deterministic already)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a method option in every chosen recipe that has it (repeatable)")
    _add_train_seeds_option(p, "records, models and labels METHOD@seedN")
    _add_eval_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train one student with one recipe", description=cmd_train.__doc__)
    p.add_argument("recipe", help="recipe name (see `mgsr-bench list recipes`) or path to a YAML file")
    p.add_argument("--out", help="output folder (default: runs/train-RECIPE)")
    p.add_argument("--pair", help="a registered pair (`mgsr-bench list pairs`): models, dtype, LoRA, batch settings")
    p.add_argument("--teacher", help="teacher model folder or Hub name (default: the tiny suite's)")
    p.add_argument("--student", help="student model folder or Hub name")
    p.add_argument("--train-data", help="MiniLLM-format train .jsonl")
    p.add_argument("--valid-data", help="MiniLLM-format validation .jsonl")
    p.add_argument("--steps", type=int, help="override the recipe's training steps")
    _add_train_seeds_option(p, "folders OUT@seedN")
    p.add_argument("--quick", action="store_true", help="use the smoke-sized tiny suite")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow code shipped with Hub models to run (off: such models are refused)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels on GPU (slower; CPU runs are deterministic already)")
    p.add_argument("--checkpoint-every", type=int,
                   help=f"steps between checkpoints in OUT/checkpoints (default: the recipe's "
                        f"train.checkpoint_every, else {CHECKPOINT_EVERY}; 0: none). Re-running the "
                        "same command after a kill continues from the newest one")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate saved models and write run records", description=cmd_eval.__doc__)
    p.add_argument("models", nargs="+", help="model folders or Hub names")
    p.add_argument("--data", action="append", metavar="NAME=PATH", help="dataset .jsonl (default: tiny suite splits)")
    p.add_argument("--pair", help="a registered pair (`mgsr-bench list pairs`) whose reference's evaluation to follow "
                        "(its BOS setting) and whose name to record")
    p.add_argument("--protocol-tokenizer", default=PROTOCOL_TOKENIZER,
                   help=f"the tokenizer the protocol's filters count tokens with (default: {PROTOCOL_TOKENIZER}, "
                        "as MiniLLM's data scripts)")
    p.add_argument("--out", default="runs/eval", help="output folder (default: runs/eval)")
    p.add_argument("--label", help="row label in the leaderboard (default: the model folder's name)")
    p.add_argument("--quick", action="store_true", help="use the smoke-sized tiny suite's splits")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow code shipped with Hub models to run (off: such models are refused)")
    _add_dtype_option(p, ", recorded in the record's config")
    _add_eval_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("agreement", help="teacher-forced: where each model puts its probability vs the teacher",
                       description=cmd_agreement.__doc__)
    p.add_argument("models", nargs="+", help="model folders, `train` or `run` folders, or Hub names")
    p.add_argument("--teacher", help="teacher model folder or Hub name (default: the tiny suite's)")
    p.add_argument("--data", help="references to score, any file `eval --data` reads (default: the tiny suite's)")
    p.add_argument("--split", choices=["test", "shifted", "valid"], default="test",
                   help="the tiny suite's split when no --data is given (default: test)")
    p.add_argument("--limit", type=int, help="score only the first N references (default: all)")
    p.add_argument("--family", help="score only the references of this task family (the tiny suite's, say story)")
    p.add_argument("--threshold", type=finite_float, default=1e-3,
                   help="teacher probability below which a token counts as off its support (default: 1e-3)")
    p.add_argument("--batch-size", type=int, default=8, help="references per forward (default: 8)")
    p.add_argument("--quick", action="store_true", help="use the smoke-sized tiny suite")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow code shipped with Hub models to run (off: such models are refused)")
    _add_dtype_option(p)
    p.add_argument("--output", help="also write the figures as JSON to this file")
    p.set_defaults(func=cmd_agreement)

    p = sub.add_parser("leaderboard", help="render methods x datasets from run records",
                       description=cmd_leaderboard.__doc__)
    p.add_argument("folder", help="folder holding run records (searched recursively)")
    p.add_argument("--format", choices=["markdown", "csv", "latex", "html"], default="markdown")
    p.add_argument("--metric", choices=["rougeL", "exact_match"], default="rougeL")
    p.add_argument("--reference", help="row whose average the others are compared with (e.g. sft or kd)")
    p.add_argument("--methods", help="comma-separated labels or method names to keep")
    p.add_argument("--datasets", help="comma-separated datasets to keep (columns)")
    _add_store_filters(p)
    p.add_argument("--reported", metavar="TEACHER->STUDENT",
                   help="add the rows papers report for this pair, e.g. gpt2-xl->gpt2 (marked, never ranked)")
    p.add_argument("--reported-file", default=str(_reported_default()), metavar="FILE",
                   help="where reported rows are read (default: leaderboards/reported.yaml)")
    p.add_argument("--output", help="also write the table to this file")
    p.add_argument("--write", metavar="DIR", help="write every format and the figures (PNG, SVG) into DIR")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("compare", help="regression check of NEW records against BASE records",
                       description=cmd_compare.__doc__)
    p.add_argument("new", help="folder (or store) of the new records")
    p.add_argument("--against", required=True, help="folder (or store) of the baseline records")
    p.add_argument("--metric", choices=["rougeL", "exact_match"], default="rougeL")
    p.add_argument("--tolerance", type=finite_float, default=0.5, help="smallest drop that can count (default: 0.5)")
    p.add_argument("--k", type=finite_float, default=2.0,
                   help="multiple of the standard error of the difference of the means, over sampling seeds or, "
                        "for rows with several, training seeds (default: 2)")
    p.add_argument("--output", help="also write the report to this file")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("history", help="a metric across commits from a results store", description=cmd_history.__doc__)
    p.add_argument("folder", help="folder holding run records (searched recursively)")
    p.add_argument("--methods", help="comma-separated labels to keep")
    p.add_argument("--dataset", help="one dataset (default: all)")
    p.add_argument("--metric", choices=["rougeL", "exact_match"], default="rougeL")
    _add_store_filters(p)
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("plan", help="per-GPU memory estimate of a registered pair", description=cmd_plan.__doc__)
    p.add_argument("pair", help="a registered pair (see `mgsr-bench list pairs`)")
    p.add_argument("--gpus", type=int, help="number of GPUs")
    p.add_argument("--gpu-mem", type=finite_float, help="memory per GPU in GiB")
    p.add_argument("--strategy", choices=["ddp", "zero2", "fsdp", "zero3"])
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--seq-len", type=int, default=512, help="prompt + response tokens (default: 512)")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing on or off (default: the pair's)")
    p.add_argument("--method", default="mgsr",
                   help="the method whose sampling and loss to count (default: mgsr: student samples, SCRG's "
                        "teacher passes and kept logits; kd: no sampling)")
    p.set_defaults(func=cmd_plan)

    # `bench` hands its arguments to the benchmark's own parser (see main())
    sub.add_parser("bench", help="training and generation throughput, peak memory, MFU (and TRL's GKD)",
                   add_help=False)

    p = sub.add_parser("build-suite", help="install the tiny suite's shipped models, or build them from scratch",
                       description=cmd_build_suite.__doc__)
    p.add_argument("--quick", action="store_true", help="the smoke-test suite tiny-quick")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the suite's models on this machine and compare them with the shipped ones")
    p.add_argument("--keep-teacher", action="store_true",
                   help="with --from-scratch: keep the shipped tokenizer and teacher (refused if their inputs changed)")
    p.add_argument("--ship", action="store_true", help="with --from-scratch: make this build the shipped suite")
    p.set_defaults(func=cmd_build_suite)
    p = sub.add_parser("list", help="list methods, recipes, pairs and suites", description=cmd_list.__doc__)
    p.add_argument("what", nargs="?", choices=["methods", "recipes", "pairs", "suites", "all"], default="all")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--deterministic" in argv:  # cuBLAS reads this when it first initialises: before any CUDA work
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if argv[:1] == ["bench"]:  # the benchmark parses its own options
        from mgsr_bench.benchmarks.bench import main as bench_main

        command = functools.partial(bench_main, argv[1:])
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        command = functools.partial(args.func, args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # in one process SIGTERM cleans up as Ctrl-C does (launched ones keep the default: see sigterm_as_exit)
        with sigterm_as_exit() if _processes() == 1 else contextlib.nullcontext():
            return command()
    except UserError as e:
        print(f"mgsr-bench: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a diverged run: the message says where its state was saved
        print(f"mgsr-bench: error: {e}", file=sys.stderr)
        return 3
    finally:  # a process of a launched run ending, perhaps on an error (no import cost for the rest)
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            from mgsr_bench.train.distributed import close_processes

            close_processes()


if __name__ == "__main__":
    sys.exit(main())
