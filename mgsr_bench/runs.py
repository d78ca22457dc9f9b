"""The commands that train: ``run`` (the tiny suite's teacher and students, trained and scored) and
``train`` (one recipe's student, once per training seed).

Each checks its whole request first (recipes, options, pair, output folders, finished runs), so a
refusal comes before any model loads; then it skips what a finished record or ``training.json``
already holds, resumes what a kill interrupted from its checkpoints, and removes those checkpoints
once the run's outputs exist.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from mgsr_bench.config import Recipe, load_recipe
from mgsr_bench.errors import UserError
from mgsr_bench.eval.generate import EvalSettings
from mgsr_bench.outputs import check_output_folder, kept_only_if_written, make_output_folder, sweep_stale
from mgsr_bench.pipeline import (SeededRun, apply_sets, check_lm_eval_tasks, eval_settings, evaluate_and_record,
                                 finished, lm_eval_scores, load_recipes, parse_train_seeds,
                                 refuse_several_processes, resolve_recipe, save_model_atomic, seeded_runs,
                                 suite_config, train_student)
from mgsr_bench.requests import CHECKPOINT_EVERY, CacheTeacherRequest, EvalOptions, RunRequest, TrainRequest
from mgsr_bench.signals import launched_processes
from mgsr_bench.teacher_cache import (DTYPES as CACHE_DTYPES, CacheKey, CacheOption, CacheReading, can_read,
                                     check_request, load_cache, read_manifest, state_digest, write_cache)
from mgsr_bench.train.tracking import Tracking, parse_report_to


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What ``run`` made: the suite it used and the leaderboard it wrote into ``out``."""

    suite_key: str
    teacher_params: int
    student_params: int
    leaderboard: str  # the markdown table
    out: Path


@dataclasses.dataclass(frozen=True)
class _RunPlan:
    """A checked ``run`` request: the recipes' runs and the settings every student shares."""

    out: Path
    suite_config: Any
    runs: list[tuple[Recipe, SeededRun]]
    settings: EvalSettings
    evaluation: EvalOptions
    train_defaults: dict[str, Any]
    overrides: dict[str, Any]
    cache_k: int | None = None  # the recipes that can read a top-k teacher cache do, as rows RECIPE+cache
    report_to: tuple[str, ...] = ()  # experiment trackers every student's steps are logged to


@dataclasses.dataclass
class _RunJob:
    """What every student of one ``run`` shares: the plan, the suite's models and data."""

    plan: _RunPlan
    suite: Any
    tokenizer: Any
    teacher: Any
    datasets: dict[str, list[dict[str, Any]]]
    pair: dict[str, Any] = dataclasses.field(init=False)
    train_records: list[dict[str, Any]] = dataclasses.field(init=False)
    valid_records: list[dict[str, Any]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.pair = self.suite.pair()  # hashes both models' weights: once
        self.train_records, self.valid_records = self.suite.split("train"), self.suite.split("valid")

    @functools.cached_property
    def teacher_digest(self) -> str:
        """What a teacher cache is checked against: computed once, and only by a run that reads one."""
        return state_digest(self.teacher)

    @property
    def suite_info(self) -> dict[str, Any]:
        return {"suite": self.suite.config.key()}

    def lm_eval(self, model: Any, tokenizer: Any) -> dict[str, Any] | None:
        """The request's lm-eval tasks' scores for ``model`` (on the suite's own tasks' data), or None."""
        return lm_eval_scores(self.plan.evaluation, model, tokenizer, self.suite.root / "data")


def _plan_run(request: RunRequest) -> _RunPlan:
    """Every check of a ``run`` request, in the order the refusals are documented, before any compute."""
    refuse_several_processes("run is the single-process tiny-suite job; launch `train` on several processes "
                             "instead (accelerate launch -m mgsr_bench train ..., docs/scale.md)")
    config = suite_config(request.quick)
    recipes = apply_sets(load_recipes(request.methods), request.sets)
    seeds = parse_train_seeds(request.train_seeds)
    settings = eval_settings(request.evaluation, config)
    if request.steps is not None and request.steps < 1:
        raise UserError(f"--steps must be >= 1, got {request.steps}")
    overrides: dict[str, Any] = {"steps": request.steps} if request.steps is not None else {}
    if request.deterministic:
        overrides["deterministic"] = True
    check_lm_eval_tasks(request.evaluation, tiny_suite=True)
    train_defaults = {"checkpoint_every": CHECKPOINT_EVERY, **config.method_train}  # a recipe's own wins
    cached = _cache_readers(recipes, train_defaults, overrides, request.teacher_cache_k)
    runs = [(recipe, run) for recipe in recipes for run in
            seeded_runs(recipe.name + ("+cache" if recipe.name in cached else ""),
                        resolve_recipe(recipe, train_defaults, overrides).train.seed, seeds)]
    return _RunPlan(request.out, config, runs, settings, request.evaluation, train_defaults, overrides,
                    request.teacher_cache_k, parse_report_to(request.report_to))


def _cache_readers(recipes: list[Recipe], defaults: dict[str, Any], overrides: dict[str, Any],
                   k: int | None) -> set[str]:
    """The recipes that read the teacher cache ``run --teacher-cache K`` asks for (none without it)."""
    if k is None:
        return set()
    if k < 1:
        raise UserError(f"--teacher-cache takes k >= 1, got {k}")
    names = {r.name for r in recipes if can_read(resolve_recipe(r, defaults, overrides).method)}
    if not names:
        raise UserError("--teacher-cache: no chosen recipe can read a teacher cache (a method whose loss reads the "
                        "teacher's distribution on ground-truth batches can; sft, seqkd and f-distill cannot)")
    return names


def _suite_cache(job: _RunJob, resolved: Any) -> tuple[CacheReading, CacheOption]:
    """The run's teacher cache for ``resolved`` (a recipe at its settings) in ``OUT/teacher-cache-kK``,
    written unless one of this teacher, these training examples and this temperature is there: how the
    run reads it, and where."""
    from mgsr_bench.data.collate import token_digest, tokenize_records, training_records

    examples = tokenize_records(training_records(job.train_records, job.tokenizer, resolved.train.long_prompts),
                                job.tokenizer)
    key = CacheKey(job.teacher_digest, token_digest(examples), len(job.tokenizer), job.plan.cache_k,
                   float(resolved.method.temperature), "float16")
    folder = job.plan.out / f"teacher-cache-k{key.k}"
    try:
        load_cache(folder, key)  # a damaged one is written again too
    except UserError:
        print(f"teacher cache: writing the teacher's top-{key.k} distributions into {folder}")
        write_cache(job.teacher, examples, folder, key, job.tokenizer.pad_token_id)
    return CacheReading(key), CacheOption(folder)


def run_suite(request: RunRequest) -> RunSummary:
    """Build or reuse the tiny suite, score its teacher, train and score each recipe's student (once
    per training seed), and write the leaderboard of every record in ``out``."""
    plan = _plan_run(request)
    with kept_only_if_written(plan.out):  # a setting refused once the models load leaves no empty --out
        make_output_folder(plan.out)
        sweep_stale(plan.out)
        return _run_planned(plan)


def _run_planned(plan: _RunPlan) -> RunSummary:
    """:func:`run_suite` once its request is checked and its folder made."""
    from mgsr_bench.models import on_compute_device
    from mgsr_bench.results import load_records
    from mgsr_bench.results.publish import write_leaderboard
    from mgsr_bench.results.record import record_group
    from mgsr_bench.suite.build import EVAL_SPLITS, ensure_suite, load_suite_models

    out = plan.out
    suite = ensure_suite(plan.suite_config)
    tokenizer, teacher = load_suite_models(suite)
    teacher = on_compute_device(teacher)  # where the students train and are scored
    datasets = {split: suite.split(split) for split in EVAL_SPLITS}
    job = _RunJob(plan, suite, tokenizer, teacher, datasets)

    t0 = time.perf_counter()
    if finished(out / "records" / "teacher.json", job.suite_info, plan.settings, bool(plan.evaluation.lm_eval),
                job.pair):
        print("teacher: a record of this evaluation is already there; kept")
    else:
        evaluate_and_record(teacher, tokenizer, label="teacher", method="teacher", datasets=datasets,
                            settings=plan.settings, pair=job.pair, config=job.suite_info,
                            record_path=out / "records" / "teacher.json", training=suite.report["teacher_train"],
                            started=t0, lm_eval=job.lm_eval(teacher, tokenizer))
    for recipe, run in plan.runs:
        _run_student(job, recipe, run)

    records = load_records(out / "records")
    write_leaderboard(records, out, reference="sft" if any(record_group(r) == "sft" for r in records) else None)
    return RunSummary(suite.config.key(), suite.report["teacher_params"], suite.report["student_params"],
                      (out / "leaderboard.md").read_text(encoding="utf-8"), out)


def _run_student(job: _RunJob, recipe: Recipe, run: SeededRun) -> None:
    """Train, save and score one recipe at one training seed, unless a record of exactly this run
    is already there; a killed run resumes from its checkpoints."""
    from mgsr_bench.models import load_model

    t0 = time.perf_counter()
    plan, suite, pair = job.plan, job.suite, job.pair
    out = plan.out
    overrides = run.overrides(plan.overrides)
    resolved = resolve_recipe(recipe, plan.train_defaults, overrides)
    reading, cache = _suite_cache(job, resolved) if plan.cache_k is not None and can_read(resolved.method) \
        else (None, None)
    planned = {**job.suite_info, **resolved.config}
    if reading is not None:  # as train_student records it
        planned["teacher_cache"] = dataclasses.asdict(reading)
    record_path = out / "records" / f"{run.label}.json"
    if (out / "models" / run.label / "config.json").exists() and finished(
            record_path, planned, plan.settings, bool(plan.evaluation.lm_eval), pair):
        print(f"{run.label}: a record of this exact run is already there; kept (delete it to redo)")
        return
    tracking = Tracking(plan.report_to, out / "logs", run.label, planned) if plan.report_to else None
    student = load_model(suite.student_init_dir)
    checkpoints = out / "checkpoints" / run.label  # a killed run re-run with the same command resumes here
    trained = train_student(recipe, student, job.teacher, job.tokenizer, job.train_records, job.valid_records,
                            plan.train_defaults, overrides, checkpoints, teacher_cache=cache, tracking=tracking)
    student, config, summary = trained.model, trained.config, trained.summary
    save_model_atomic(student, job.tokenizer, out / "models" / run.label, trained.method_state)
    evaluate_and_record(student, job.tokenizer, label=run.label, group=run.group, method=recipe.method,
                        datasets=job.datasets, settings=plan.settings, pair=pair,
                        config={**job.suite_info, **config}, record_path=record_path, training=summary, started=t0,
                        lm_eval=job.lm_eval(student, job.tokenizer))
    shutil.rmtree(checkpoints, ignore_errors=True)  # spent only once the record exists


def _is_main_process() -> bool:
    """Rank 0 of a multi-process launch (torchrun and accelerate set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """One finished ``train`` run, as the main process saved it."""

    folder: Path
    summary: dict[str, Any]  # the training summary ``training.json`` keeps


@dataclasses.dataclass
class _TrainPlan:
    """The settings of one ``train`` request's runs (one per training seed)."""

    recipe: Recipe
    defaults: dict[str, Any]
    overrides: dict[str, Any]
    pair: Any  # the registered pair (``--pair``), or None
    teacher_cache: CacheOption | None = None
    report_to: tuple[str, ...] = ()  # experiment trackers each run's steps are logged to

    def config(self, run: SeededRun) -> dict[str, Any]:
        """The config ``training.json`` records for ``run``."""
        config = resolve_recipe(self.recipe, self.defaults, run.overrides(self.overrides)).config
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
    custom: bool  # models and data named in the request, else the tiny suite's
    trust_remote_code: bool


@dataclasses.dataclass(frozen=True)
class _TrainSources:
    """Where a ``train`` request's models and data come from: a registered pair, named models and
    data (``custom``), or the tiny suite."""

    pair: Any  # the registered pair, or None
    teacher: str | None
    student: str | None
    custom: bool


def _train_sources(request: TrainRequest) -> _TrainSources:
    """The request's pair and models, checked: a pair names the models itself, and named models come
    with named data."""
    from mgsr_bench.train.distributed import check_lora_launch

    pair, teacher, student = None, request.teacher, request.student
    if request.pair:
        from mgsr_bench.models.pairs import get_pair

        if request.teacher or request.student:
            raise UserError("--pair names the teacher and student: drop --teacher/--student")
        pair = get_pair(request.pair)
        if pair.finetune == "lora":
            check_lora_launch()
        if pair.teacher != "tiny":
            teacher, student = pair.teacher, pair.student
    custom = [teacher, student, request.train_data, request.valid_data]
    if any(custom) and not all(custom):
        raise UserError("--teacher, --student (or --pair), --train-data and --valid-data go together "
                        "(or none: the tiny suite)")
    return _TrainSources(pair, teacher, student, all(custom))


def _train_settings(request: TrainRequest, sources: _TrainSources) -> tuple[dict[str, Any], dict[str, Any]]:
    """The train defaults (a recipe's own win over them) and overrides (they win over the recipe)."""
    pair = sources.pair
    defaults: dict[str, Any] = {} if sources.custom else dict(suite_config(request.quick).method_train)
    if pair is not None:
        defaults = {**defaults, "micro_batch": pair.micro_batch, "grad_accum": pair.grad_accum,
                    "gradient_checkpointing": pair.gradient_checkpointing}
    overrides: dict[str, Any] = {"steps": request.steps} if request.steps is not None else {}
    if request.deterministic:
        overrides["deterministic"] = True
    defaults = {"checkpoint_every": CHECKPOINT_EVERY, **defaults}
    if request.checkpoint_every is not None:
        overrides["checkpoint_every"] = request.checkpoint_every
    return defaults, overrides


def _train_todo(plan: _TrainPlan, out: Path, runs: list[SeededRun]) -> list[tuple[SeededRun, Path]]:
    """Each run's folder, checked now, before minutes of loading; the runs a kill left unfinished."""
    if len(runs) > 1 and out.name in ("", ".", ".."):
        raise UserError(f"--out {out} names no folder: with several --train-seeds each seed's run goes to "
                        "NAME@seedN beside OUT, so give OUT a name (e.g. --out runs/kd)")
    folders = [out if run.label == out.name else out.with_name(run.label) for run in runs]
    for folder in folders:
        check_output_folder(folder)  # made once the inputs have been read
    if len(runs) == 1 and (out / "training.json").exists():
        raise UserError(f"{out} holds a finished run (training.json); choose another --out")
    return [(run, folder) for run, folder in zip(runs, folders)
            if len(runs) == 1 or not _finished_seed(plan, run, folder)]


def train_runs(request: TrainRequest, on_trained: Callable[[TrainedRun], None]) -> None:
    """Train one student with one recipe (with several training seeds, one run per seed, each into
    OUT@seedN) on the tiny suite's pair and data unless the request names others; ``on_trained``
    hears of each run the main process saved."""
    from mgsr_bench.train.distributed import check_fsdp_accelerate, deepspeed_launch

    check_fsdp_accelerate()  # before a model loads: a 13B teacher takes minutes
    recipe = load_recipe(request.recipe)
    out = Path(request.out or f"runs/train-{recipe.name}")
    seeds = parse_train_seeds(request.train_seeds)
    if seeds is not None and len(seeds) > 1 and (launched_processes() > 1 or deepspeed_launch()):
        raise UserError("train runs several --train-seeds one after another in one process; under a launcher "
                        "give one seed per launch (--train-seeds N)")
    if request.checkpoint_every is not None and request.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be >= 0, got {request.checkpoint_every}")
    sources = _train_sources(request)
    defaults, overrides = _train_settings(request, sources)
    cache = None
    if request.teacher_cache is not None:
        cache = CacheOption(request.teacher_cache, request.teacher_cache_rest)
        check_request(cache.folder, resolve_recipe(recipe, defaults, overrides).method, cache.rest)
    plan = _TrainPlan(recipe, defaults, overrides, sources.pair, cache, parse_report_to(request.report_to))
    todo = _train_todo(plan, out, seeded_runs(out.name, resolve_recipe(recipe, defaults, overrides).train.seed,
                                              seeds))
    with kept_only_if_written(*(folder for _, folder in todo)):  # a refusal once the models load: no empty --out
        _train_todo_runs(request, plan, sources, todo, on_trained)


def _train_todo_runs(request: TrainRequest, plan: _TrainPlan, sources: _TrainSources,
                     todo: list[tuple[SeededRun, Path]], on_trained: Callable[[TrainedRun], None]) -> None:
    """:func:`train_runs` once its request is checked: load the data and tokenizer, train each seed."""
    from mgsr_bench.data.jsonl import read_records
    from mgsr_bench.models import check_same_vocabulary, load_tokenizer
    from mgsr_bench.suite.build import ensure_suite
    from mgsr_bench.train.distributed import end_processes

    trust = request.trust_remote_code
    if sources.custom:
        train_records, valid_records = read_records(request.train_data), read_records(request.valid_data)
        tokenizer, student_tok = load_tokenizer(sources.teacher, trust), load_tokenizer(sources.student, trust)
        check_same_vocabulary(tokenizer, student_tok)
        teacher_path, student_path = sources.teacher, sources.student
    else:
        for _, folder in todo:
            make_output_folder(folder)
        suite = ensure_suite(suite_config(request.quick))
        tokenizer = load_tokenizer(suite.tokenizer_dir)
        teacher_path, student_path = suite.teacher_dir, suite.student_init_dir
        train_records, valid_records = suite.split("train"), suite.split("valid")
    job = _TrainJob(plan, teacher_path, student_path, tokenizer, train_records, valid_records, sources.custom, trust)
    for run, folder in todo:
        if _is_main_process():
            sweep_stale(folder)  # what a killed earlier run of this folder left under temporary names
        trained = _train_run(job, run, folder)
        if trained is not None:
            on_trained(trained)
    end_processes()


def _finished_seed(plan: _TrainPlan, run: SeededRun, folder: Path) -> bool:
    """Whether ``folder`` holds this seed's finished run, so that the same command run again after
    a kill skips it (and says so); a finished run of other settings there is refused. (A teacher
    cache's key, known once the models load, is compared as present or not: the settings and the
    cache folder say the rest.)"""
    path = folder / "training.json"
    if not path.exists():
        return False
    config = json.loads(path.read_text(encoding="utf-8")).get("config") or {}
    cached = config.pop("teacher_cache", None) is not None
    if config != json.loads(json.dumps(plan.config(run))) or cached != (plan.teacher_cache is not None):
        raise UserError(f"{folder} holds a finished run of other settings (training.json); choose another --out")
    print(f"{folder}: this seed's run is already finished there (training.json); kept")
    return True


def _train_run(job: _TrainJob, run: SeededRun, folder: Path) -> TrainedRun | None:
    """Load the models, train one student at ``run``'s seed and, on the main process, save it and its
    ``training.json`` into ``folder`` (its checkpoints in ``folder/checkpoints``, resumed after a kill);
    None on the other processes."""
    import torch

    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.models import check_vocabulary_fits
    from mgsr_bench.train.distributed import deepspeed_launch, load_models
    from mgsr_bench.train.loop import make_accelerator

    plan = job.plan
    overrides = run.overrides(plan.overrides)
    cfg = resolve_recipe(plan.recipe, plan.defaults, overrides).train
    tracking = Tracking(plan.report_to, folder / "logs", folder.name, plan.config(run)) if plan.report_to else None
    # under DeepSpeed the engine comes up first: ZeRO-3's zero3_init_flag partitions the models as they load
    accelerator = make_accelerator(cfg, tracking) if deepspeed_launch() else None
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
    trained = train_student(plan.recipe, student, teacher, job.tokenizer, job.train_records, job.valid_records,
                            plan.defaults, overrides, checkpoint_dir=folder / "checkpoints", accelerator=accelerator,
                            teacher_cache=plan.teacher_cache, tracking=tracking)
    config, summary, method_state, student = trained.config, trained.summary, trained.method_state, trained.model
    if not _is_main_process():  # under torchrun / accelerate launch the main process writes the results
        return None
    if plan.pair is not None:
        config["pair"] = plan.pair.name
    save_model_atomic(student, job.tokenizer, folder / "model", method_state)
    write_atomic(folder / "training.json", json.dumps({"config": config, "training": summary}, indent=2))
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the run is complete: its checkpoints are spent
    return TrainedRun(folder, summary)


def cache_teacher(request: CacheTeacherRequest) -> tuple[Path, dict[str, Any]]:
    """Write the teacher's top-k distributions on the training examples the runs will train on (the
    same prompt filter and tokenisation); returns the cache folder and its manifest."""
    import torch

    from mgsr_bench.data.collate import token_digest, tokenize_records, training_records
    from mgsr_bench.data.jsonl import read_records
    from mgsr_bench.models import load_model, load_tokenizer, on_compute_device
    from mgsr_bench.suite.build import ensure_suite

    refuse_several_processes("cache-teacher runs in one process: run it without a launcher")
    if request.dtype not in CACHE_DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(CACHE_DTYPES)}, got {request.dtype!r}")
    if (request.teacher is None) != (request.train_data is None):
        raise UserError("--teacher and --train-data go together (or neither: the tiny suite's)")
    if request.k < 1 or request.batch_size < 1 or not request.temperature > 0:
        raise UserError("--k and --batch-size must be >= 1 and --temperature > 0")
    check_output_folder(request.out)
    if request.teacher is None:
        suite = ensure_suite(suite_config(request.quick))
        teacher_path, records = suite.teacher_dir, suite.split("train")
    else:
        teacher_path, records = request.teacher, read_records(request.train_data)
    tokenizer = load_tokenizer(teacher_path, request.trust_remote_code)
    examples = tokenize_records(training_records(records, tokenizer, request.long_prompts), tokenizer)
    if not examples:
        raise UserError("no training example is left once prompts over 256 tokens are dropped: --long-prompts truncate")
    teacher = on_compute_device(load_model(teacher_path, torch.float32, trust_remote_code=request.trust_remote_code))
    key = CacheKey(teacher=state_digest(teacher), examples=token_digest(examples), vocab_size=len(tokenizer),
                   k=request.k, temperature=request.temperature, dtype=request.dtype)
    folder = write_cache(teacher, examples, request.out, key, tokenizer.pad_token_id, request.batch_size)
    return folder, read_manifest(folder)
