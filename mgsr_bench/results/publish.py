"""Every rendering of one set of records written to a folder: the files committed under ``leaderboards/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mgsr_bench.data.jsonl import write_atomic
from mgsr_bench.results.leaderboard import build_board, render_leaderboard
from mgsr_bench.results.plots import bar_chart, ranking_chart, training_curves

EXTENSIONS = {"markdown": "md", "csv": "csv", "latex": "tex", "html": "html"}


def write_leaderboard(records: list[dict[str, Any]], folder: str | Path, metric: str = "rougeL",
                      reference: str | None = None, reported: list[dict[str, Any]] | None = None,
                      plots: bool = True, datasets: list[str] | None = None) -> list[Path]:
    """``leaderboard.{md,csv,tex,html}``, and ``ranking.{png,svg}``, ``scores.{png,svg}`` and
    ``training.{png,svg}`` when ``plots``."""
    folder = Path(folder)
    written = []
    for fmt, ext in EXTENSIONS.items():
        path = folder / f"leaderboard.{ext}"
        write_atomic(path, render_leaderboard(records, fmt, reference=reference, datasets=datasets, reported=reported,
                                              metric=metric))
        written.append(path)
    if plots:
        board = build_board(records, metric, reference, datasets, reported=reported)
        written += ranking_chart(board, folder / "ranking")
        written += bar_chart(board, folder / "scores")
        written += training_curves(records, folder / "training") or []
    return written
