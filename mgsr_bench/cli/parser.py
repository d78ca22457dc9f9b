"""The ``mgsr-bench`` argument parser: every command's options, their defaults and help.

The commands themselves live in :mod:`mgsr_bench.cli.main`, which hands them in; each command's
description is its docstring.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Mapping

from mgsr_bench.cli.parsing import OneLineParser, finite_float, iso_date
from mgsr_bench.config import DEFAULT_SEEDS, PROTOCOL_TOKENIZER
from mgsr_bench.requests import CHECKPOINT_EVERY

DEFAULT_METHODS = "sft,kd"

Command = Callable[[argparse.Namespace], int]


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


def _add_report_to_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-to", metavar="TRACKERS",
                   help="log every step (loss and each method's terms, validation, tokens/s, peak memory) to "
                        "tensorboard, wandb, trackio or mlflow (comma-separated; default: none), under OUT/logs")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/tiny", help="output folder (default: runs/tiny)")
    p.add_argument("--quick", action="store_true", help="smoke-sized suite and training (about a minute)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated recipes (default: {DEFAULT_METHODS})")
    p.add_argument("--steps", type=int, help="override the training steps of every method")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels on GPU (slower; CPU runs are deterministic already)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a method option in every chosen recipe that has it (repeatable)")
    _add_train_seeds_option(p, "records, models and labels METHOD@seedN")
    p.add_argument("--teacher-cache", type=int, metavar="K",
                   help="the recipes that can (kd, rkl, jsd, tvd, sfkl, srkl, abkd) read the suite teacher's top-K "
                        "distributions from a cache written once into OUT/teacher-cache-kK, as rows METHOD+cache")
    _add_report_to_option(p)
    _add_eval_options(p)


def _train_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--teacher-cache", metavar="FOLDER",
                   help="read the teacher's distributions from this cache (`mgsr-bench cache-teacher`) instead of "
                        "running it on ground-truth batches (every method whose loss reads the teacher's "
                        "distribution; sampled batches still run it)")
    p.add_argument("--teacher-cache-rest", choices=("bucket", "renormalize"), default="bucket",
                   help="the mass outside the cached top k: one rest bucket on both sides (default), or the k "
                        "renormalised (docs/divergences.md)")
    _add_report_to_option(p)


def _sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", help="the grid file (YAML)")
    p.add_argument("--status", action="store_true", help="show each cell (done, running, failed, waiting); run nothing")


def _cache_teacher_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="cache folder (default: runs/teacher-cache-kK)")
    p.add_argument("--teacher", help="teacher model folder, with its tokenizer (default: the tiny suite's)")
    p.add_argument("--train-data", help="MiniLLM-format train .jsonl (with --teacher)")
    p.add_argument("--k", type=int, default=64, help="tokens kept per position (default: 64)")
    p.add_argument("--temperature", type=finite_float, default=1.0,
                   help="the methods' temperature, at which the teacher's log-probabilities are taken (default: 1)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float16",
                   help="storage dtype of the log-probabilities (default: float16)")
    p.add_argument("--long-prompts", choices=("drop", "truncate"), default="drop",
                   help="as the runs' train.long_prompts: the cache holds exactly the examples they train on")
    p.add_argument("--batch-size", type=int, default=16, help="examples per teacher forward (default: 16)")
    p.add_argument("--quick", action="store_true", help="the smoke-sized tiny suite's teacher and data")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow code shipped with Hub models to run (off: such models are refused)")


def _eval_options(p: argparse.ArgumentParser) -> None:
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


def _agreement_options(p: argparse.ArgumentParser) -> None:
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


def _leaderboard_options(p: argparse.ArgumentParser) -> None:
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


def _compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("new", help="folder (or store) of the new records")
    p.add_argument("--against", required=True, help="folder (or store) of the baseline records")
    p.add_argument("--metric", choices=["rougeL", "exact_match"], default="rougeL")
    p.add_argument("--tolerance", type=finite_float, default=0.5, help="smallest drop that can count (default: 0.5)")
    p.add_argument("--k", type=finite_float, default=2.0,
                   help="multiple of the standard error of the difference of the means, over sampling seeds or, "
                        "for rows with several, training seeds (default: 2)")
    p.add_argument("--allow-missing", action="store_true",
                   help="pass although rows of BASE are missing from NEW (default: exit 4)")
    p.add_argument("--output", help="also write the report to this file")


def _history_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="folder holding run records (searched recursively)")
    p.add_argument("--methods", help="comma-separated labels to keep")
    p.add_argument("--dataset", help="one dataset (default: all)")
    p.add_argument("--metric", choices=["rougeL", "exact_match"], default="rougeL")
    _add_store_filters(p)


def _plan_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--teacher-cache", type=int, metavar="K",
                   help="also the disk a top-K teacher cache takes (float16), per response token and for "
                        "--response-tokens")
    p.add_argument("--response-tokens", type=int, metavar="N",
                   help="response tokens of the training set, for the cache's size (default: per million)")


def _build_suite_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the smoke-test suite tiny-quick")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the suite's models on this machine and compare them with the shipped ones")
    p.add_argument("--keep-teacher", action="store_true",
                   help="with --from-scratch: keep the shipped tokenizer and teacher (refused if their inputs changed)")
    p.add_argument("--ship", action="store_true", help="with --from-scratch: make this build the shipped suite")


def _list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=["methods", "recipes", "pairs", "suites", "all"], default="all")


# (command, help, its options) in the order ``--help`` lists them; ``bench`` hands its arguments to
# the benchmark's own parser (see main()), so it has no options here
_SUBCOMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None] | None]] = [
    ("run", "the main job: tiny suite -> teacher -> students -> evaluation -> table", _run_options),
    ("train", "train one student with one recipe", _train_options),
    ("sweep", "a comparison grid: recipes x suites or pairs x training seeds x overrides, resumable",
     _sweep_options),
    ("cache-teacher", "the teacher's top-k distributions on a training set, once for every method",
     _cache_teacher_options),
    ("eval", "evaluate saved models and write run records", _eval_options),
    ("agreement", "teacher-forced: where each model puts its probability vs the teacher", _agreement_options),
    ("leaderboard", "render methods x datasets from run records", _leaderboard_options),
    ("compare", "regression check of NEW records against BASE records", _compare_options),
    ("history", "a metric across commits from a results store", _history_options),
    ("plan", "per-GPU memory estimate of a registered pair", _plan_options),
    ("bench", "training and generation throughput, peak memory, MFU (and TRL's GKD)", None),
    ("build-suite", "install the tiny suite's shipped models, or build them from scratch", _build_suite_options),
    ("list", "list methods, recipes, pairs and suites", _list_options),
]


EXIT_STATUSES = """\
Errors are one line. Exit status: 0 done; 1 compare found a regression (plan: it does not fit;
sweep: a cell failed); 2 bad input, refused before any work; 3 a training run diverged (its state
saved); 4 compare could not compare everything it was asked to; 5 the machine refused (a full disk,
a permission, damaged or unsafe weights), with nothing left half-written. --debug anywhere on the
line, or MGSR_BENCH_DEBUG=1, shows the traceback of a status-5 failure."""


def build_parser(commands: Mapping[str, Command]) -> argparse.ArgumentParser:
    """The parser of every command; ``commands`` maps each command but ``bench`` to the function that
    runs it, whose docstring is the command's description."""
    parser = OneLineParser(prog="mgsr-bench", description="Benchmark for LLM knowledge distillation.",
                           epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add_options in _SUBCOMMANDS:
        if add_options is None:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        p = sub.add_parser(name, help=help_text, description=commands[name].__doc__)
        add_options(p)
        p.set_defaults(func=commands[name])
    return parser
