"""Figures from run records with matplotlib: a ranking of the rows (one line each, readable at 40
rows), grouped bars per dataset, quality against training cost, and training curves."""

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


def _plain(text: Any) -> str:
    """A label drawn as written: ``$`` would start matplotlib's math text (and a lone one fails the render)."""
    return str(text).replace("$", r"\$")


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
        ax.bar(xs, [0.0 if math.isnan(h) else h for h in heights], width, yerr=errors, capsize=1.5, label=_plain(row),
               color=cmap(i % 20), hatch="//" if board.kind[row] == "reported" else None,
               edgecolor="black" if board.kind[row] != "measured" else None, linewidth=0.5)
    ax.set_xticks(range(len(groups)), [_plain(g) for g in groups])
    ax.set_ylabel(METRICS[board.metric])
    spread = ("std over sampling seeds, or over training seeds for a row of several" if board.several_seeds
              else "std over seeds")
    ax.set_title(f"{METRICS[board.metric]} per dataset (mean over seeds, error bar: {spread})")
    ax.legend(fontsize=7, ncol=max(1, len(rows) // 12), bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    paths = _save(fig, stem)
    plt.close(fig)
    return paths


def ranking_order(board: Board) -> list[str]:
    """The rows from the best average to the worst; rows without an average last, by name."""
    avg = board.avg
    return sorted(board.means.index, key=lambda r: (math.isnan(avg[r]), -avg[r] if not math.isnan(avg[r]) else 0, r))


def _interval(board: Board, row: str, column: str) -> tuple[float, float, bool]:
    """A row's mean in one panel, the half-width drawn around it, and whether that is over training
    seeds (else the sampling std of a single run, or 0 where there is none)."""
    mean = board.avg[row] if column == "avg" else board.means.at[row, column]
    spread = board.avg_stds.get(row, math.nan) if column == "avg" else board.stds.at[row, column]
    return mean, (0.0 if math.isnan(spread) else spread), board.runs(row) > 1


def _limits(board: Board, rows: list[str], column: str) -> tuple[float, float]:
    """A panel's x range: the measured rows' intervals, padded. The teacher (far above every student)
    would otherwise squeeze the students into a corner; rows outside the range sit at its edge."""
    shown = [r for r in rows if board.kind[r] == "measured"] or rows
    ends = [(m - h, m + h) for m, h, _ in (_interval(board, r, column) for r in shown) if not math.isnan(m)]
    if not ends:
        return 0.0, 1.0
    lo, hi = min(e[0] for e in ends), max(e[1] for e in ends)
    pad = max(0.06 * (hi - lo), 0.5)
    return lo - pad, hi + pad


def _draw_panel(ax, board: Board, rows: list[str], column: str) -> None:
    """One dataset's (or the average's) column of the ranking: a bar and a dot per row."""
    lo, hi = _limits(board, rows, column)
    for y, row in enumerate(rows):
        if y % 2:
            ax.axhspan(y - 0.5, y + 0.5, color="#f0f0f0", zorder=0)
        mean, half, several = _interval(board, row, column)
        if math.isnan(mean):
            continue
        color = _COLORS[board.kind[row]]
        if not lo <= mean <= hi:  # beyond the students' range: an arrow at the edge, with the value
            edge = hi if mean > hi else lo
            ax.annotate(f"{mean:.1f}", (edge, y), xytext=(-3 if mean > hi else 3, 0), textcoords="offset points",
                        ha="right" if mean > hi else "left", va="center", fontsize=7.5, color=color)
            ax.plot(edge, y, marker=">" if mean > hi else "<", color=color, markersize=5, clip_on=False, zorder=3)
            continue
        if half:
            ax.hlines(y, mean - half, mean + half, color=color if several else "#a9bde0",
                      linewidth=2.4 if several else 1.4, zorder=2)
        ax.plot(mean, y, marker="o", markersize=4.5, zorder=3, color="black" if several else color,
                markerfacecolor="white" if board.kind[row] == "reported" else ("black" if several else color))
    if board.reference is not None:
        ref = board.avg[board.reference] if column == "avg" else board.means.at[board.reference, column]
        if lo <= ref <= hi:
            ax.axvline(ref, color="#777777", linestyle="--", linewidth=0.8, zorder=1)
    ax.set_xlim(lo, hi)
    ax.set_title(_plain(column), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)


_COLORS = {"measured": "#2f6fd0", "teacher": "#666666", "reported": "#b25b00"}


def ranking_figure(board: Board):
    """One panel per dataset and one for the average, one line per row sorted by average (best on
    top): a dot at the mean and a bar of ± 1 std (dark with a black dot: over training seeds; light:
    a single run's sampling std), the reference row's value dashed. Each panel's range is the
    measured rows'; the teacher, beyond it, sits at the edge with its value. Row names label the
    left axis (the reference in bold, the teacher in grey); each row's number of training runs is
    written at the right."""
    plt = _pyplot()
    rows, columns = ranking_order(board), [*board.datasets, "avg"]
    fig, axes = plt.subplots(1, len(columns), sharey=True, squeeze=False,
                             figsize=(1.8 + 2.6 * len(columns), 1.4 + 0.27 * len(rows)))
    for ax, column in zip(axes[0], columns):
        _draw_panel(ax, board, rows, column)
    first, last = axes[0][0], axes[0][-1]
    first.set_yticks(range(len(rows)), [_plain(r) for r in rows], fontsize=8.5)
    first.set_ylim(len(rows) - 0.5, -0.5)  # best on top
    for tick, row in zip(first.get_yticklabels(), rows):
        tick.set_color(_COLORS[board.kind[row]] if board.kind[row] != "measured" else "black")
        tick.set_fontweight("bold" if row == board.reference else "normal")
    for y, row in enumerate(rows):
        if board.runs(row) > 1:
            last.annotate(f"n={board.runs(row)}", (1.03, y), xycoords=("axes fraction", "data"), va="center",
                          fontsize=7.5, color="#444444")
    bar = ("± 1 std over training seeds (dark, n at the right), or over one run's sampling seeds (light)"
           if board.several_seeds else "± 1 std over sampling seeds")
    reference = f"; dashed: {_plain(board.reference)}" if board.reference else ""
    fig.suptitle(f"{METRICS[board.metric]}, rows by average\ndot: mean; bar: {bar}{reference}", fontsize=9.5)
    fig.tight_layout()
    return fig


def ranking_chart(board: Board, stem: Path) -> list[Path]:
    """:func:`ranking_figure` written as ``stem``.png and .svg."""
    plt = _pyplot()
    fig = ranking_figure(board)
    paths = _save(fig, stem)
    plt.close(fig)
    return paths


def frontier(points: dict[str, tuple[float, float]]) -> list[str]:
    """The rows no other row beats at lower or equal cost: ``points`` maps a row to ``(cost, score)``;
    returned from the cheapest up, each scoring higher than every cheaper one."""
    best, out = -math.inf, []
    for row, (_, score) in sorted(points.items(), key=lambda item: (item[1][0], -item[1][1])):
        if score > best:
            out.append(row)
            best = score
    return out


def cost_chart(board: Board, stem: Path) -> list[Path] | None:
    """Average score against training device-seconds (log scale), one point per measured row with a
    training cost, the bar ± 1 std over training seeds where a row has several; the frontier (rows
    no cheaper row beats) joined. None when no row has a cost. Written as ``stem``.png and .svg."""
    points = {r: (board.cost(r), board.avg[r]) for r in board.means.index
              if board.kind[r] == "measured" and not math.isnan(board.cost(r)) and not math.isnan(board.avg[r])}
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for row, (cost, score) in points.items():
        spread = board.avg_stds.get(row, math.nan)
        ax.errorbar(cost, score, yerr=None if math.isnan(spread) else spread, fmt="o", color=_COLORS["measured"],
                    markersize=4.5, capsize=2, linewidth=1)
        ax.annotate(_plain(row), (cost, score), xytext=(4, 3), textcoords="offset points", fontsize=7.5)
    best = frontier(points)
    ax.step([points[r][0] for r in best], [points[r][1] for r in best], where="post", color="#b25b00",
            linewidth=1.2, label="frontier: no cheaper row scores higher")
    if board.reference in points:
        ax.axhline(points[board.reference][1], color="#777777", linestyle="--", linewidth=0.8,
                   label=_plain(board.reference))
    ax.set_xscale("log")
    ax.set_xlabel("training cost, device-seconds (mean over training seeds; log scale)")
    ax.set_ylabel(f"average {METRICS[board.metric]}")
    ax.set_title(f"Average {METRICS[board.metric]} against training cost", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
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
        loss_ax.plot(steps, smooth, color=cmap(i % 20), label=_plain(r["label"]), linewidth=1)
        for key in ("val_rougeL", "val_loss"):
            points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
            if points:
                val_key = val_key or key
                if key == val_key:
                    val_ax.plot(*zip(*points), marker="o", markersize=3, color=cmap(i % 20),
                                label=_plain(r["label"]))
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
