"""Methods x datasets tables from run records, rendered with pandas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from mgsr_bench.errors import UserError
from mgsr_bench.results.record import SCHEMA, read_record

# Rows in this order first (teacher on top, then the SFT reference), the rest alphabetically.
_FIRST = ("teacher", "sft")


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every run record under ``folder`` (recursively); other JSON files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder not found: {folder}")
    records = []
    for path in sorted(folder.rglob("*.json")):
        try:
            head = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(head, dict) and head.get("schema") == SCHEMA:
            records.append(read_record(path))
    if not records:
        raise UserError(f"no run records in {folder} (run `mgsr-bench run --out {folder}` first)")
    return records


def _latest_per_label(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["label"] not in latest or r["created"] >= latest[r["label"]]["created"]:
            latest[r["label"]] = r
    order = sorted(latest, key=lambda lbl: (_FIRST.index(lbl) if lbl in _FIRST else len(_FIRST), lbl))
    return [latest[lbl] for lbl in order]


def leaderboard_frame(records: list[dict[str, Any]], metric: str = "rougeL") -> pd.DataFrame:
    """Rows = run labels, columns = datasets + ``avg``; cells ``mean ± std`` over seeds.

    The latest record per label is used. ``avg`` is the mean of the per-dataset means.
    """
    rows = []
    for r in _latest_per_label(records):
        for dataset, s in r["scores"].items():
            rows.append({"method": r["label"], "dataset": dataset, "mean": s[metric]["mean"], "std": s[metric]["std"]})
    long = pd.DataFrame(rows)
    means = long.pivot(index="method", columns="dataset", values="mean")
    stds = long.pivot(index="method", columns="dataset", values="std")
    order = [r["label"] for r in _latest_per_label(records)]
    means, stds = means.loc[order], stds.loc[order]
    table = means.map(lambda v: f"{v:.2f}") + " ± " + stds.map(lambda v: f"{v:.2f}")
    table["avg"] = means.mean(axis=1).map(lambda v: f"{v:.2f}")
    table.columns.name = None
    return table


def family_frame(records: list[dict[str, Any]], dataset: str) -> pd.DataFrame | None:
    """Per-family exact match (mean over seeds) on one dataset, or None when records carry no families."""
    rows = {}
    for r in _latest_per_label(records):
        per_seed = r["scores"].get(dataset, {}).get("per_seed", {})
        fams = [s["family_exact_match"] for s in per_seed.values() if "family_exact_match" in s]
        if fams:
            rows[r["label"]] = {f: sum(d[f] for d in fams) / len(fams) for f in fams[0]}
    return pd.DataFrame.from_dict(rows, orient="index").round(1) if rows else None


def training_frame(records: list[dict[str, Any]]) -> pd.DataFrame | None:
    """Per trained run: steps, seconds per step, training minutes, best step, and the share of steps per source.

    The sources are where each step's responses came from (``ground_truth``, fresh ``student``
    or ``teacher`` samples, a ``replay`` of stored samples, or ``both``); ``scrg`` is the mean
    fraction of rows SCRG corrected on the steps where it ran.
    """
    rows = {}
    for r in _latest_per_label(records):
        training = r.get("training") or {}
        history = training.get("history") or []
        if not history or "seconds_per_step" not in training:
            continue
        row: dict[str, Any] = {"steps": len(history), "s/step": round(training["seconds_per_step"], 3),
                               "train min": round(training["wall_time_s"] / 60, 1),
                               "best step": training.get("best_step")}
        sources = [h.get("source", "ground_truth") for h in history]
        for name in ("student", "teacher", "replay", "both"):
            share = sources.count(name) / len(sources)
            if share:
                row[f"{name} steps"] = f"{share:.0%}"
        corrected = [h["scrg_corrected"] for h in history if "scrg_corrected" in h]
        if corrected:
            row["scrg corrected"] = f"{sum(corrected) / len(corrected):.0%}"
        rows[r["label"]] = row
    return pd.DataFrame.from_dict(rows, orient="index").fillna("") if rows else None


def render_leaderboard(records: list[dict[str, Any]], fmt: str = "markdown") -> str:
    """ROUGE-L and exact-match tables (plus per-family exact match) as markdown, or ROUGE-L as CSV."""
    rouge = leaderboard_frame(records, "rougeL")
    if fmt == "csv":
        return rouge.to_csv(index_label="method")
    if fmt != "markdown":
        raise UserError(f"unknown format {fmt!r}; use markdown or csv")
    parts = ["ROUGE-L (mean ± std over seeds)", "", rouge.to_markdown(), "",
             "Exact match (mean ± std over seeds)", "", leaderboard_frame(records, "exact_match").to_markdown()]
    training = training_frame(records)
    if training is not None:
        parts += ["", "Training cost (wall time on the machine that ran each record; share of steps per source)", "",
                  training.to_markdown()]
    for dataset in rouge.columns.drop("avg"):
        fam = family_frame(records, dataset)
        if fam is not None:
            parts += ["", f"Exact match by task family on {dataset} (mean over seeds)", "", fam.to_markdown()]
    return "\n".join(parts) + "\n"
