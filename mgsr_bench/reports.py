"""The commands that read a results store: ``leaderboard``, ``compare`` and ``history``, and the
memory ``plan`` of a registered pair.

Each checks its request's options and output paths before reading anything, and returns what the
command prints; the files a request names are written here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mgsr_bench.errors import UserError
from mgsr_bench.outputs import check_output_file, check_output_folder
from mgsr_bench.requests import CompareRequest, HistoryRequest, LeaderboardRequest, PlanRequest


@dataclasses.dataclass(frozen=True)
class Leaderboard:
    """A rendered leaderboard and the files ``--write`` made of it."""

    text: str
    written: list[Path]


def leaderboard(request: LeaderboardRequest) -> Leaderboard:
    """The table of the store's records (and the papers' rows for ``reported``), written to
    ``output`` and, in every format with the figures, into ``write`` when the request names them."""
    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.results import load_records, render_leaderboard
    from mgsr_bench.results.leaderboard import select_rows
    from mgsr_bench.results.publish import write_leaderboard
    from mgsr_bench.results.reported import DEFAULT_FILE, load_reported, reported_rows

    if request.output:
        check_output_file(request.output, "--output")
    if request.write:
        check_output_folder(request.write, "--write")
    reported = None
    if request.reported:
        reported_file = DEFAULT_FILE if request.reported_file is None else request.reported_file
        reported = reported_rows(load_reported(reported_file), request.reported)
        if not reported:
            raise UserError(f"{reported_file} has no reported rows for pair {request.reported!r}")
    records = load_records(request.folder, **request.filters.as_kwargs())
    labels, datasets = request.labels, request.datasets
    text = render_leaderboard(records, request.format, reference=request.reference, datasets=datasets,
                              labels=labels, reported=reported, metric=request.metric)
    written: list[Path] = []
    if request.write:
        written = write_leaderboard(select_rows(records, labels), request.write, request.metric, request.reference,
                                    reported, datasets=datasets)
    if request.output:
        write_atomic(request.output, text)
    return Leaderboard(text, written)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A rendered comparison, whether any row regressed, and the command's exit status with its
    one-line summary (:func:`mgsr_bench.results.compare.gate`)."""

    text: str
    regression: bool
    exit_code: int = 0
    summary: str = ""


def compare(request: CompareRequest) -> Comparison:
    """The records under ``new`` against those under ``against``, written to ``output`` when named."""
    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.results import load_records
    from mgsr_bench.results.compare import compare_records, gate, render_comparison

    if request.tolerance < 0 or request.k < 0:
        raise UserError("--tolerance and --k must be >= 0")
    if request.output:
        check_output_file(request.output, "--output")
    new, base = load_records(request.new), load_records(request.against)
    frame = compare_records(new, base, request.metric, request.tolerance, request.k)
    text = render_comparison(frame, request.metric, request.allow_missing)
    if request.output:
        write_atomic(request.output, text)
    code, summary = gate(frame, request.allow_missing)
    return Comparison(text, bool((frame["status"] == "regression").any()), code, summary)


def history(request: HistoryRequest) -> Any:
    """A pandas DataFrame of the metric in every matching record, oldest first; refused when empty."""
    from mgsr_bench.results import load_records
    from mgsr_bench.results.compare import history_frame

    records = load_records(request.folder, methods=None, labels=request.labels, **request.filters.as_kwargs())
    frame = history_frame(records, request.metric, request.dataset)
    if frame.empty:
        raise UserError(f"no scores for dataset {request.dataset!r} in the matching records" if request.dataset
                        else "the matching records have no scores")
    return frame


def memory_plan(request: PlanRequest) -> tuple[Any, Any]:
    """The registered pair and its per-GPU memory plan (:class:`mgsr_bench.train.memory_plan.Plan`)."""
    from mgsr_bench.methods import get_method
    from mgsr_bench.models.pairs import get_pair
    from mgsr_bench.train.memory_plan import plan_pair

    pair = get_pair(request.pair)
    get_method(request.method)  # an unknown method is refused here, with the nearest name
    for name in ("gpus", "micro_batch", "seq_len"):
        if getattr(request, name) is not None and getattr(request, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if request.gpu_mem is not None and request.gpu_mem <= 0:
        raise UserError("--gpu-mem must be > 0 (GiB)")
    plan = plan_pair(pair, gpus=request.gpus, gpu_mem_gib=request.gpu_mem, strategy=request.strategy,
                     micro_batch=request.micro_batch, seq_len=request.seq_len,
                     gradient_checkpointing=request.checkpointing, method=request.method)
    return pair, plan
