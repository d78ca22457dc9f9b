"""The ``mgsr-bench`` command line: run, train, sweep, cache-teacher, eval, agreement, leaderboard, compare, history,
plan, bench, list, build-suite.

Each command reads its options into a request, hands it to the function that does the work
(:mod:`mgsr_bench.runs`, :mod:`mgsr_bench.scoring`, :mod:`mgsr_bench.reports`), and prints what
comes back. The commands import those modules when they run, so ``--help`` and ``list`` start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from mgsr_bench.cli.parser import build_parser
from mgsr_bench.errors import EnvironmentFailure, UserError, describe_os_error
from mgsr_bench.requests import (AgreementRequest, CacheTeacherRequest, CompareRequest, EvalOptions, EvalRequest,
                                 HistoryRequest, LeaderboardRequest, PlanRequest, RunRequest, StoreFilter,
                                 TrainRequest)
from mgsr_bench.signals import launched_processes, sigterm_as_exit


def _eval_options(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(seeds=args.seeds, greedy=args.greedy, batch_size=args.eval_batch_size,
                       temperature=args.temperature, max_length=args.max_length, max_prompt=args.max_prompt,
                       bos=args.bos, max_new_tokens=args.max_new_tokens,
                       no_repeat_ngram_size=args.no_repeat_ngram_size,
                       lm_eval=tuple(args.lm_eval.split(",")) if args.lm_eval else (),
                       lm_eval_limit=args.lm_eval_limit)


def cmd_run(args: argparse.Namespace) -> int:
    """Build or reuse the tiny suite, train each recipe's student (once per --train-seeds seed),
    evaluate all, print the leaderboard."""
    from mgsr_bench.runs import run_suite

    summary = run_suite(RunRequest(out=Path(args.out), methods=args.methods, evaluation=_eval_options(args),
                                   quick=args.quick, steps=args.steps, deterministic=args.deterministic,
                                   sets=tuple(args.set or ()), train_seeds=args.train_seeds,
                                   teacher_cache_k=args.teacher_cache, report_to=args.report_to))
    print(f"\nTiny suite {summary.suite_key}: teacher {summary.teacher_params / 1e6:.2f}M params, "
          f"student {summary.student_params / 1e6:.2f}M params; splits: test (in-domain), "
          f"shifted (held-out templates and entities)\n")
    print(summary.leaderboard)
    print(f"records, models and tables written under {summary.out}/")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one student with one recipe (with several --train-seeds, one run per seed, each into
    OUT@seedN); defaults to the tiny suite's pair and data."""
    from mgsr_bench.runs import TrainedRun, train_runs

    def trained(run: TrainedRun) -> None:
        print(f"best validation {run.summary['best_val']:.3f} (on {run.summary['val_examples']} records) at step "
              f"{run.summary['best_step']}; model saved to {run.folder / 'model'}")

    request = TrainRequest(recipe=args.recipe, out=Path(args.out) if args.out else None, pair=args.pair,
                           teacher=args.teacher, student=args.student, train_data=args.train_data,
                           valid_data=args.valid_data, steps=args.steps, train_seeds=args.train_seeds,
                           quick=args.quick, trust_remote_code=args.trust_remote_code,
                           deterministic=args.deterministic, checkpoint_every=args.checkpoint_every,
                           teacher_cache=Path(args.teacher_cache) if args.teacher_cache else None,
                           teacher_cache_rest=args.teacher_cache_rest, report_to=args.report_to)
    train_runs(request, trained)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a comparison grid (GRID.yaml: recipes x suites or pairs x training seeds x overrides; see
    mgsr_bench/sweep.py for the keys): each cell trains and evaluates into one store; cells whose record
    is there are skipped, so the same command after a failure runs what is missing. --status shows
    each cell. Exit status 1 when a cell failed."""
    from mgsr_bench.sweep import load_grid, status_table, submit

    grid = load_grid(args.grid)
    failed = False
    if not args.status:
        lines, failed = submit(grid)
        for line in lines:
            print(line)
    table, counts = status_table(grid)
    print(table)
    print("sweep: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + f" of {len(grid.cells)} cells")
    return 1 if failed else 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    """Run the teacher once over a training set and keep its top-k next-token distribution at every
    response position, for distillation runs to read on their ground-truth batches (`train --teacher-cache`):
    the tiny suite's teacher and train split unless --teacher and --train-data name others."""
    from mgsr_bench.runs import cache_teacher

    request = CacheTeacherRequest(out=Path(args.out or f"runs/teacher-cache-k{args.k}"), teacher=args.teacher,
                                  train_data=args.train_data, k=args.k, temperature=args.temperature,
                                  dtype=args.dtype, long_prompts=args.long_prompts, batch_size=args.batch_size,
                                  quick=args.quick, trust_remote_code=args.trust_remote_code)
    from mgsr_bench.teacher_cache import footprint

    folder, manifest = cache_teacher(request)
    size, per_1k = footprint(folder)
    print(f"teacher cache written to {folder}: {manifest['examples_count']} examples, {manifest['rows']} response "
          f"tokens, k = {manifest['k']}, {size:.1f} MB ({per_1k:.2f} MB per 1,000 response tokens)")
    return 0


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
    from mgsr_bench.scoring import evaluate_models

    def scored(label: str, record: dict[str, Any]) -> None:
        print(f"{label}: " + ", ".join(f"{name} ROUGE-L {s['rougeL']['mean']:.2f} ± {s['rougeL']['std']:.2f}"
                                       for name, s in record["scores"].items()))
        for task, metrics in (record.get("lm_eval") or {}).items():
            print(f"  lm-eval {task}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    request = EvalRequest(models=tuple(args.models), out=Path(args.out), evaluation=_eval_options(args),
                          data=tuple(args.data or ()), pair=args.pair, protocol_tokenizer=args.protocol_tokenizer,
                          label=args.label, quick=args.quick, trust_remote_code=args.trust_remote_code,
                          dtype=args.dtype)
    evaluate_models(request, scored)
    return 0


def cmd_agreement(args: argparse.Namespace) -> int:
    """Teacher-forced on reference responses, where each model puts its probability: its mass on
    tokens the teacher rules out, its entropy, both KLs to the teacher, the references' NLL and top-1
    agreement (token means; docs/evaluation.md). Models as for ``eval``; the teacher is scored too,
    as the floor. Defaults: the tiny suite's teacher and its ``test`` split."""
    from mgsr_bench.scoring import agreement_table

    result = agreement_table(AgreementRequest(
        models=tuple(args.models), teacher=args.teacher, data=args.data, split=args.split, limit=args.limit,
        family=args.family, threshold=args.threshold, batch_size=args.batch_size, quick=args.quick,
        trust_remote_code=args.trust_remote_code, dtype=args.dtype, output=args.output))
    print(f"{result.references} references, {result.tokens} response tokens; off_support: mass on tokens the "
          f"teacher gives < {args.threshold:g}\n")
    print(result.table.to_markdown(floatfmt=".4f"))
    return 0


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _store_filter(args: argparse.Namespace) -> StoreFilter:
    return StoreFilter(pair=args.pair, commit=args.commit, since=args.since, until=args.until)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Render the methods x datasets table of the run records under a folder (a results store).

    A row is a label, or a group of several training seeds' records (``METHOD@seedN``: the newest
    record of each seed); cells are mean ± std over sampling seeds, or over training seeds for a
    row of several (the mean of each run's mean). The best measured value of each column is marked,
    ``--reference`` adds each row's difference in average from that row, and ``--reported
    TEACHER->STUDENT`` adds the numbers papers report for that pair (marked, never ranked).
    ``--write DIR`` writes every format and the figures into DIR.
    """
    from mgsr_bench.reports import leaderboard

    table = leaderboard(LeaderboardRequest(
        folder=args.folder, format=args.format, metric=args.metric, reference=args.reference,
        labels=_split(args.methods), datasets=_split(args.datasets), filters=_store_filter(args),
        reported=args.reported, reported_file=args.reported_file, output=args.output, write=args.write))
    for path in table.written:
        print(f"wrote {path}", file=sys.stderr)
    print(table.text, end="")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare the records under NEW with those under BASE, per row and dataset; exit 1 on a regression,
    4 when the comparison is incomplete (rows of BASE missing from NEW without --allow-missing, numbers
    that are not finite, nothing compared), 2 for a record that cannot be read or is invalid.

    A drop is a regression when it exceeds max(--tolerance, --k x the standard error of the difference
    of the two means): over sampling seeds, or over training seeds for a row with several
    (docs/results.md); the report's noise column says which.
    """
    from mgsr_bench.reports import compare

    comparison = compare(CompareRequest(new=args.new, against=args.against, metric=args.metric,
                                        tolerance=args.tolerance, k=args.k, output=args.output,
                                        allow_missing=args.allow_missing))
    print(comparison.text, end="")
    return comparison.exit_code


def cmd_history(args: argparse.Namespace) -> int:
    """A metric across commits: every matching record in the store, oldest first."""
    from mgsr_bench.reports import history

    frame = history(HistoryRequest(folder=args.folder, labels=_split(args.methods), dataset=args.dataset,
                                   metric=args.metric, filters=_store_filter(args)))
    print(frame.to_markdown(index=False))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Estimate per-GPU memory of training a registered pair, term by term, and what to change if it does not fit.

    Defaults come from the pair's entry (`mgsr-bench list pairs`); each option overrides one.
    Exit status 1 when the plan does not fit.
    """
    from mgsr_bench.reports import memory_plan

    pair, plan = memory_plan(PlanRequest(pair=args.pair, method=args.method, gpus=args.gpus, gpu_mem=args.gpu_mem,
                                         strategy=args.strategy, micro_batch=args.micro_batch,
                                         seq_len=args.seq_len, checkpointing=args.checkpointing))
    cache = cache_size_line(args.teacher_cache, args.response_tokens) if args.teacher_cache is not None else None
    print(f"{pair.name}: {pair.teacher} -> {pair.student} ({pair.finetune}, {pair.dtype}), method {args.method}")
    print(plan.render(), end="")
    if cache is not None:
        print(cache)
    return 0 if plan.fits else 1


def cache_size_line(k: int, tokens: int | None) -> str:
    """``plan --teacher-cache K``: the disk a top-K float16 teacher cache takes."""
    from mgsr_bench.teacher_cache import bytes_per_token

    if k < 1 or (tokens is not None and tokens < 1):
        raise UserError("--teacher-cache and --response-tokens must be >= 1")
    per = bytes_per_token(k, "float16")
    n = tokens or 1_000_000
    return (f"teacher cache at k = {k} (float16): {per} bytes per response token, {per * n / 2 ** 30:.2f} GiB for "
            f"{n:,} response tokens (written once per teacher x data x template, read by every ground-truth row)")


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
    from mgsr_bench.pipeline import suite_config
    from mgsr_bench.suite.build import ensure_suite
    from mgsr_bench.suite.shipped import build_from_scratch, ship

    for flag in ("ship", "keep_teacher"):
        if getattr(args, flag) and not args.from_scratch:
            raise UserError(f"--{flag.replace('_', '-')} is for a build from scratch: add --from-scratch")
    config = suite_config(args.quick)
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


COMMANDS = {"run": cmd_run, "train": cmd_train, "sweep": cmd_sweep, "cache-teacher": cmd_cache_teacher,
            "eval": cmd_eval, "agreement": cmd_agreement,
            "leaderboard": cmd_leaderboard, "compare": cmd_compare, "history": cmd_history, "plan": cmd_plan,
            "build-suite": cmd_build_suite, "list": cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MGSR_BENCH_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if "--deterministic" in argv:  # cuBLAS reads this when it first initialises: before any CUDA work
        from mgsr_bench.train.runtime import deterministic_cublas

        deterministic_cublas()
    if argv[:1] == ["bench"]:  # the benchmark parses its own options
        from mgsr_bench.benchmarks.bench import main as bench_main

        command = functools.partial(bench_main, argv[1:])
    else:
        parser = build_parser(COMMANDS)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        command = functools.partial(args.func, args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # in one process SIGTERM cleans up as Ctrl-C does (launched ones keep the default: see sigterm_as_exit)
        with sigterm_as_exit() if launched_processes() == 1 else contextlib.nullcontext():
            return command()
    except UserError as e:
        print(f"mgsr-bench: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a diverged run: the message says where its state was saved
        print(f"mgsr-bench: error: {e}", file=sys.stderr)
        return 3
    except (EnvironmentFailure, OSError) as e:  # the machine refused: one line, the traceback with --debug
        if debug:
            raise
        message = describe_os_error(e) if isinstance(e, OSError) else str(e)
        print(f"mgsr-bench: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 5
    finally:  # a process of a launched run ending, perhaps on an error (no import cost for the rest)
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            from mgsr_bench.train.distributed import close_processes

            close_processes()


if __name__ == "__main__":
    sys.exit(main())
