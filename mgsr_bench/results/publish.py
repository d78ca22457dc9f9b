"""Every rendering of one set of records written to a folder: the files committed under ``leaderboards/``.

The set is made whole before any of it is shown: every table and figure is rendered into a hidden
temporary folder beside the files, then each is renamed over its old copy. A failure while
rendering (or a kill) leaves the previous set as it was, and the temporary folder is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mgsr_bench.errors import UserError, writing
from mgsr_bench.outputs import sweep_stale, temp_prefix
from mgsr_bench.results.leaderboard import build_board, render_leaderboard
from mgsr_bench.results.plots import bar_chart, cost_chart, ranking_chart, training_curves

EXTENSIONS = {"markdown": "md", "csv": "csv", "latex": "tex", "html": "html"}


def write_leaderboard(records: list[dict[str, Any]], folder: str | Path, metric: str = "rougeL",
                      reference: str | None = None, reported: list[dict[str, Any]] | None = None,
                      plots: bool = True, datasets: list[str] | None = None) -> list[Path]:
    """``leaderboard.{md,csv,tex,html}``, and ``ranking.{png,svg}``, ``scores.{png,svg}``, ``cost.{png,svg}``
    (where records have a training cost) and ``training.{png,svg}`` when ``plots``; returns the paths written."""
    folder = Path(folder)
    texts = {f"leaderboard.{ext}": render_leaderboard(records, fmt, reference=reference, datasets=datasets,
                                                      reported=reported, metric=metric)
             for fmt, ext in EXTENSIONS.items()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        sweep_stale(folder)  # the staging folders of killed writes
        staging = Path(tempfile.mkdtemp(prefix=temp_prefix(folder / "leaderboard"), dir=folder))
    except OSError as e:
        raise UserError(f"cannot write into {folder} ({e.strerror}); make it writable or choose another --write") \
            from None
    try:
        with writing(folder):
            made = []
            for name, text in texts.items():
                (staging / name).write_text(text, encoding="utf-8")
                made.append(staging / name)
            if plots:
                board = build_board(records, metric, reference, datasets, reported=reported)
                made += ranking_chart(board, staging / "ranking")
                made += bar_chart(board, staging / "scores")
                made += cost_chart(board, staging / "cost") or []
                made += training_curves(records, staging / "training") or []
            umask = os.umask(0)
            os.umask(umask)
            for path in made:
                with open(path, "rb") as f:
                    os.fsync(f.fileno())  # the renames must not land before the bytes do
                os.chmod(path, 0o666 & ~umask)
            written = []
            for path in made:
                os.replace(path, folder / path.name)
                written.append(folder / path.name)
            return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
