"""Figures from run records with matplotlib: grouped bars per dataset, and training curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mgsr_bench.results.leaderboard import METRICS, Board, latest_per_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    matplotlib.rcParams["svg.hashsalt"] = "mgsr-bench"  # stable element ids: re-rendering gives the same SVG
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})  # no timestamp: reproducible files
    return paths


def bar_chart(board: Board, stem: Path) -> list[Path]:
    """Grouped bars: datasets on the x axis, one bar per row with its seed std as the error bar;
    reported rows hatched. Written as ``stem``.png and .svg."""
    plt = _pyplot()
    rows = list(board.means.index)
    groups = [*board.datasets, "avg"]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) * len(groups)), 4.5))
    cmap = plt.get_cmap("tab20")
    for i, row in enumerate(rows):
        heights = [board.means.at[row, d] for d in board.datasets] + [board.avg[row]]
        errors = [board.stds.at[row, d] for d in board.datasets] + [math.nan]
        errors = [0.0 if math.isnan(e) else e for e in errors]
        xs = [g + (i - (len(rows) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [0.0 if math.isnan(h) else h for h in heights], width, yerr=errors, capsize=1.5, label=row,
               color=cmap(i % 20), hatch="//" if board.kind[row] == "reported" else None,
               edgecolor="black" if board.kind[row] != "measured" else None, linewidth=0.5)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(METRICS[board.metric])
    ax.set_title(f"{METRICS[board.metric]} per dataset (mean over seeds, error bar: std over seeds)")
    ax.legend(fontsize=7, ncol=max(1, len(rows) // 12), bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    paths = _save(fig, stem)
    plt.close(fig)
    return paths


def training_curves(records: list[dict[str, Any]], stem: Path, window: int = 25) -> list[Path] | None:
    """Training loss (moving average over ``window`` steps) and validation points per trained row;
    None when no record has a training history."""
    runs = [r for r in latest_per_label(records) if (r.get("training") or {}).get("history")]
    if not runs:
        return None
    plt = _pyplot()
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("tab20")
    val_key = None
    for i, r in enumerate(runs):
        history = r["training"]["history"]
        steps = [h["step"] for h in history]
        losses = [h["loss"] for h in history]
        smooth = [sum(losses[max(0, j - window + 1): j + 1]) / len(losses[max(0, j - window + 1): j + 1])
                  for j in range(len(losses))]
        loss_ax.plot(steps, smooth, color=cmap(i % 20), label=r["label"], linewidth=1)
        for key in ("val_rougeL", "val_loss"):
            points = [(h["step"], h[key]) for h in history if key in h]
            if points:
                val_key = val_key or key
                if key == val_key:
                    val_ax.plot(*zip(*points), marker="o", markersize=3, color=cmap(i % 20), label=r["label"])
                break
    loss_ax.set(xlabel="step", ylabel=f"training loss (moving average, {window} steps)",
                title="Training loss (each method's own objective)")
    val_ax.set(xlabel="step", ylabel=val_key or "validation", title="Validation")
    val_ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
    paths = _save(fig, stem)
    plt.close(fig)
    return paths
