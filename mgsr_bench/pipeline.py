"""The end-to-end path the commands share: resolve and check a request's settings, train a student
with a recipe, evaluate models, write records.

Every function here validates its inputs before any compute and writes its outputs atomically
(models into a temporary folder renamed into place, records via temporary file + rename), so an
interrupted run leaves either finished artefacts or nothing. :mod:`mgsr_bench.runs` (``run``,
``train``) and :mod:`mgsr_bench.scoring` (``eval``, ``agreement``) compose these into the commands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mgsr_bench.config import Recipe, TrainConfig, config_hash, load_recipe, train_config
from mgsr_bench.errors import UserError, writing
from mgsr_bench.data.collate import tokenize_records, training_records
from mgsr_bench.eval.evaluate import evaluate_model
from mgsr_bench.eval.generate import EvalSettings
from mgsr_bench.methods import Method, available_methods, get_method, option_names
from mgsr_bench.models.lora import merged
from mgsr_bench.outputs import temp_sibling
from mgsr_bench.results import make_record, read_record, write_record
from mgsr_bench.requests import EvalOptions
from mgsr_bench.results.record import seeded_label
from mgsr_bench.signals import launched_processes
from mgsr_bench.teacher_cache import CacheOption, reading_for_run
from mgsr_bench.train import train
from mgsr_bench.train.tracking import Tracking


METHOD_STATE = "method_state.pt"
SEED_MAX = 2 ** 64 - 1  # torch's generators take seeds from 0 to 2^64 - 1


@dataclasses.dataclass(frozen=True)
class SeededRun:
    """One training run of a recipe: its label, the row it is aggregated into (``group``) and the
    training seed it is given (None: the recipe's own)."""

    label: str
    group: str
    seed: int | None

    def overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """``overrides`` with this run's seed as the ``seed`` train override."""
        return overrides if self.seed is None else {**overrides, "seed": self.seed}


def seeded_runs(label: str, default_seed: int, seeds: Sequence[int] | None) -> list[SeededRun]:
    """The runs of one recipe for ``--train-seeds``: one run labelled ``label`` when no seeds are
    given or only ``default_seed`` (the records, models and labels of a plain run), else one run
    ``<label>@seed<N>`` per seed, all in group ``label``."""
    if seeds is None:
        return [SeededRun(label, label, None)]
    if tuple(seeds) == (default_seed,):
        return [SeededRun(label, label, default_seed)]
    return [SeededRun(seeded_label(label, seed), label, seed) for seed in seeds]


def save_model_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path,
                      method_state: dict[str, Any] | None = None) -> None:
    """Save weights (safetensors) and tokenizer into ``folder`` via a temporary sibling folder.

    ``method_state`` (a loss sub-network's weights and optimiser state, e.g. MGSR's f_phi) is saved
    beside them as ``method_state.pt``. A LoRA student is saved with its adapters merged.
    """
    model = merged(model)
    tmp = temp_sibling(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(folder):
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if method_state is not None:
                torch.save(method_state, tmp / METHOD_STATE)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclasses.dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe with its settings merged: what a run with it trains with and records."""

    train: TrainConfig
    method: Method
    config: dict[str, Any]  # the resolved config a run record and ``training.json`` keep


def resolve_recipe(recipe: Recipe, train_defaults: dict[str, Any] | None = None,
                   train_overrides: dict[str, Any] | None = None) -> ResolvedRecipe:
    """The training settings, the method and the resolved config a run with ``recipe`` records."""
    merged = {**(train_defaults or {}), **recipe.train, **(train_overrides or {})}
    cfg = train_config(merged, where=f"recipe {recipe.name!r} train")
    method = get_method(recipe.method, **recipe.options)
    config = {"recipe": recipe.name, "method": recipe.method, "options": method.options(),
              "train": dataclasses.asdict(cfg)}
    return ResolvedRecipe(cfg, method, config)


def suite_config(quick: bool) -> Any:
    """The tiny suite's config, or the smoke-sized tiny-quick's."""
    from mgsr_bench.suite.build import SUITES

    return SUITES["tiny-quick" if quick else "tiny"]


def load_recipes(names: str) -> list[Recipe]:
    """The recipes of a comma-separated list, at least one."""
    recipes = [load_recipe(n.strip()) for n in names.split(",") if n.strip()]
    if not recipes:
        raise UserError("--methods must name at least one recipe (see `mgsr-bench list recipes`)")
    return recipes


def apply_sets(recipes: list[Recipe], sets: Sequence[str]) -> list[Recipe]:
    """``--set KEY=VALUE`` (YAML value) overrides a method option in every recipe whose method has it;
    every recipe's options are then checked by building its method, so an out-of-range value fails
    here, before any compute."""
    if not sets:
        return recipes
    import yaml

    methods = available_methods()
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        value = yaml.safe_load(text)
        takers = [r for r in recipes if r.method in methods
                  and key.strip() in option_names(r.method)]
        if not takers:
            raise UserError(f"--set {key.strip()}: no chosen recipe's method has that option "
                            "(see the recipes' options: block)")
        recipes = [dataclasses.replace(r, options={**r.options, key.strip(): value}) if r in takers else r
                   for r in recipes]
    for recipe in recipes:
        get_method(recipe.method, **recipe.options)
    return recipes


def eval_settings(options: EvalOptions, suite: Any = None) -> EvalSettings:
    """The protocol's settings; with ``suite`` (a suite config) the tiny suite's own (its
    max_new_tokens, no n-gram ban) for its splits; each option given overrides them."""
    settings = EvalSettings(seeds=parse_seeds(options.seeds), greedy=options.greedy, batch_size=options.batch_size,
                            temperature=options.temperature, max_length=options.max_length,
                            max_prompt=options.max_prompt, add_bos=options.bos)
    if suite is not None:
        settings.max_new_tokens = suite.max_new_tokens
        settings.no_repeat_ngram_size = suite.no_repeat_ngram_size
    if options.max_new_tokens is not None:
        settings.max_new_tokens = options.max_new_tokens
    if options.no_repeat_ngram_size is not None:
        settings.no_repeat_ngram_size = options.no_repeat_ngram_size
    settings.validate()
    return settings


def check_lm_eval_tasks(options: EvalOptions, tiny_suite: bool) -> None:
    """Refuse unknown lm-eval tasks (or lm-eval missing) before any compute; nothing when none are asked for."""
    if options.lm_eval:
        from mgsr_bench.eval.lm_harness import check_tasks

        check_tasks(list(options.lm_eval), tiny_suite=tiny_suite)


def lm_eval_scores(options: EvalOptions, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   suite_data: Path | None) -> dict[str, Any] | None:
    """The lm-eval tasks' scores for one model, or None when none were asked for."""
    if not options.lm_eval:
        return None
    if options.lm_eval_limit is not None and options.lm_eval_limit < 1:
        raise UserError(f"--lm-eval-limit must be >= 1, got {options.lm_eval_limit}")
    from mgsr_bench.eval.lm_harness import run_lm_eval

    return run_lm_eval(model, tokenizer, list(options.lm_eval), suite_data, options.lm_eval_limit)


def refuse_several_processes(message: str) -> None:
    """The commands that run in one process stop, with ``message``, when launched on several."""
    if launched_processes() > 1:
        raise UserError(message)


def finished(record_path: Path, config: dict[str, Any], settings: EvalSettings, lm_eval: bool = False,
             pair: dict[str, Any] | None = None) -> bool:
    """Whether ``record_path`` holds a valid record of exactly this config and evaluation (and lm-eval scores,
    when asked for), and, given ``pair``, of this pair (the tiny suite's carries its weights' digests, so a
    record made before the suite was rebuilt is redone): re-running a command then skips that model
    instead of redoing it."""
    try:
        record = read_record(record_path)
    except UserError:
        return False
    same = record["config_hash"] == config_hash({**config, "evaluation": settings.as_dict()})
    return same and (pair is None or record["pair"] == pair) and (not lm_eval or bool(record.get("lm_eval")))


@dataclasses.dataclass
class TrainedStudent:
    """What :func:`train_student` gives back: the resolved config, the training summary the record
    stores, the method's state at the best step (saved beside the weights) and the trained student
    (``None`` on the processes other than the main one of a run that sharded the student's weights)."""

    config: dict[str, Any]
    summary: dict[str, Any]
    method_state: dict[str, Any] | None
    model: PreTrainedModel | None


def train_student(recipe: Recipe, student: PreTrainedModel, teacher: PreTrainedModel | None,
                  tokenizer: PreTrainedTokenizerBase, train_records: list[dict[str, Any]],
                  valid_records: list[dict[str, Any]], train_defaults: dict[str, Any] | None = None,
                  train_overrides: dict[str, Any] | None = None, checkpoint_dir: Path | None = None,
                  accelerator: Accelerator | None = None, teacher_cache: CacheOption | None = None,
                  tracking: Tracking | None = None) -> TrainedStudent:
    """Train ``student`` with ``recipe`` (:class:`TrainedStudent` says what comes back).

    Training settings resolve as: ``TrainConfig`` defaults < ``train_defaults`` (the suite's)
    < the recipe's ``train`` block < ``train_overrides`` (the command line). With
    ``checkpoint_dir`` the run checkpoints there and resumes from it (see :func:`train`), whose
    ``Accelerator`` ``accelerator`` is, when the caller built it before loading the models. With
    ``teacher_cache`` the loss reads the teacher's cached distributions instead of running it; the
    cache's key and convention enter the run's config (so its record is another row than the live
    teacher's). With ``tracking`` every step is also logged to experiment trackers.
    """
    resolved = resolve_recipe(recipe, train_defaults, train_overrides)
    cfg, config = resolved.train, resolved.config
    given = len(train_records), len(valid_records)
    train_records = training_records(train_records, tokenizer, cfg.long_prompts)
    valid_records = training_records(valid_records, tokenizer, cfg.long_prompts)
    if cfg.long_prompts == "drop" and (not train_records or not valid_records):
        raise UserError("every training or validation prompt is longer than 256 tokens, and train.long_prompts "
                        "drops such examples: shorten the prompts, or set train.long_prompts=truncate")
    train_examples, reading = tokenize_records(train_records, tokenizer), None
    if teacher_cache is not None:
        reading, train_examples = reading_for_run(teacher_cache.folder, resolved.method, teacher, train_examples,
                                                  len(tokenizer), teacher_cache.rest)
        config = {**config, "teacher_cache": dataclasses.asdict(reading)}
    result = train(student, teacher, tokenizer, resolved.method, train_examples,
                   valid_records, tokenize_records(valid_records, tokenizer), cfg, desc=f"train {recipe.name}",
                   checkpoint_dir=checkpoint_dir, accelerator=accelerator, teacher_cache=reading, tracking=tracking)
    summary = {"seed": cfg.seed, "best_step": result.best_step, "best_val": result.best_score,
               "steps_run": result.steps_run, "stopped_early": result.stopped_early,
               "val_examples": result.val_examples,
               "long_prompts_dropped": {"train": given[0] - len(train_records), "valid": given[1] - len(valid_records)},
               "wall_time_s": result.wall_time_s, "seconds_per_step": result.seconds_per_step,
               "cost": result.cost, "history": result.history}
    return TrainedStudent(config, summary, result.method_state, result.model)


def evaluate_and_record(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, label: str, method: str,
                        datasets: dict[str, list[dict[str, Any]]], settings: EvalSettings, pair: dict[str, Any],
                        config: dict[str, Any], record_path: Path, training: dict[str, Any] | None = None,
                        started: float | None = None, lm_eval: dict[str, Any] | None = None,
                        group: str | None = None) -> dict[str, Any]:
    """Score ``model`` on every dataset over the seeds and write its run record (with lm-eval's scores,
    if any); ``group`` is the record's row (default: its label)."""
    t0 = time.perf_counter()
    cache = record_path.parent.parent / ".eval-cache" / label  # finished generations, until the record exists
    scores = evaluate_model(model, tokenizer, datasets, settings, desc=f"eval {label}", cache_dir=cache)
    record = make_record(label=label, method=method, config={**config, "evaluation": settings.as_dict()}, pair=pair,
                         evaluation=settings.as_dict(), scores=scores,
                         wall_time_s=time.perf_counter() - (started if started is not None else t0),
                         training=training, group=group)
    if lm_eval is not None:
        record["lm_eval"] = lm_eval
    write_record(record, record_path)
    shutil.rmtree(cache, ignore_errors=True)
    with contextlib.suppress(OSError):  # the shared folder too once no other label's cache is in it
        cache.parent.rmdir()
    return record


def seed_list(text: str, flag: str) -> tuple[int, ...]:
    """Distinct comma-separated seeds from 0 to 2^64 - 1 (what torch's generators take), or one line
    naming ``flag`` and the problem."""
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"[+-]?[0-9]+", part) for part in parts):
        raise UserError(f"{flag} takes comma-separated integers such as 1,2,3, got {text!r}")
    seeds = tuple(int(part) for part in parts)
    for seed in seeds:
        if not 0 <= seed <= SEED_MAX:
            problem = "is negative" if seed < 0 else "does not fit in 64 bits"
            raise UserError(f"{flag}: seed {seed} {problem}; give seeds from 0 to {SEED_MAX}")
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if twice:  # one seed twice would be scored (or trained) once but counted twice in the spread
        raise UserError(f"{flag} names seed {twice[0]} twice: give each seed once")
    return seeds


def parse_seeds(text: str | Sequence[int]) -> tuple[int, ...]:
    """``--seeds 10,20,30`` (sampling seeds) -> ``(10, 20, 30)``, checked before any compute."""
    return seed_list(text, "--seeds") if isinstance(text, str) else tuple(text)


def parse_train_seeds(text: str | None) -> tuple[int, ...] | None:
    """``--train-seeds 1,2,3``, checked before any compute; None when the option is not given."""
    return None if text is None else seed_list(text, "--train-seeds")
