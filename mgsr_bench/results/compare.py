"""Regression checks between two sets of run records, and a metric's history across commits.

A drop counts as a regression only when it exceeds the noise: ``max(tolerance, k * se)``, where
``se = sqrt(std_new^2 / n_new + std_base^2 / n_base)`` is the standard error of the difference of
the two means over seeds (``std`` the seed std, ``n`` the number of seeds). Seed std measures
decoding noise only; the tolerance is there for the training noise it does not see. Rows whose
evaluation settings differ (seeds, decoding, lengths) are not compared, nor rows of another
teacher/student pair: another pair name, or, where both records carry them, other digests of the
teacher's or the student init's weights (two builds of the tiny suite can differ). Records without
digests (made before they were recorded, or of Hub models) are compared on the pair name alone.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mgsr_bench.results.leaderboard import latest_per_label

STATUSES = ("regression", "improvement", "within noise", "settings differ", "pair differs", "new", "missing")
WEIGHTS = ("teacher_weights", "student_weights")  # the pair's weight digests in a record (tiny suite)


def pair_differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records come from different models: pair names, or weight digests both of them hold."""
    pa, pb = a.get("pair", {}), b.get("pair", {})
    return pa.get("name") != pb.get("name") or any(k in pa and k in pb and pa[k] != pb[k] for k in WEIGHTS)


def digest_on_one_side(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether one record carries the pair's weight digests and the other does not (they cannot be checked)."""
    return any((k in a.get("pair", {})) != (k in b.get("pair", {})) for k in WEIGHTS)


def compare_records(new: list[dict[str, Any]], base: list[dict[str, Any]], metric: str = "rougeL",
                    tolerance: float = 0.5, k: float = 2.0) -> pd.DataFrame:
    """One row per label x dataset present on either side, with the decision."""
    if tolerance < 0 or k < 0:
        raise ValueError("tolerance and k must be >= 0")
    old = {r["label"]: r for r in latest_per_label(base)}
    cur = {r["label"]: r for r in latest_per_label(new)}
    rows = []
    for label in sorted(set(old) | set(cur)):
        datasets = sorted(set(old.get(label, {}).get("scores", {})) | set(cur.get(label, {}).get("scores", {})))
        for dataset in datasets:
            b = old.get(label, {}).get("scores", {}).get(dataset)
            n = cur.get(label, {}).get("scores", {}).get(dataset)
            row: dict[str, Any] = {"label": label, "dataset": dataset}
            if b is None or n is None:
                row["status"] = "new" if b is None else "missing"
                rows.append(row)
                continue
            if old[label]["evaluation"] != cur[label]["evaluation"]:
                rows.append({**row, "status": "settings differ"})
                continue
            if pair_differs(old[label], cur[label]):
                rows.append({**row, "status": "pair differs"})
                continue
            row["unchecked"] = digest_on_one_side(old[label], cur[label])
            bm, bs, nm, ns = b[metric]["mean"], b[metric]["std"], n[metric]["mean"], n[metric]["std"]
            se = math.sqrt(bs ** 2 / max(len(b["per_seed"]), 1) + ns ** 2 / max(len(n["per_seed"]), 1))
            threshold = max(tolerance, k * se)
            delta = nm - bm
            status = "regression" if delta < -threshold else "improvement" if delta > threshold else "within noise"
            rows.append({**row, "base": bm, "base_std": bs, "new": nm, "new_std": ns, "delta": delta,
                         "threshold": threshold, "status": status})
    return pd.DataFrame(rows, columns=["label", "dataset", "base", "base_std", "new", "new_std", "delta",
                                       "threshold", "status", "unchecked"])


def render_comparison(frame: pd.DataFrame, metric: str) -> str:
    """A readable report: regressions first, then improvements, the rest, and a one-line verdict."""
    order = {s: i for i, s in enumerate(STATUSES)}
    shown = frame.sort_values(by=["status", "label", "dataset"], key=lambda c: c.map(order) if c.name == "status" else c)
    table = shown.drop(columns="unchecked")
    for col in ("base", "base_std", "new", "new_std", "threshold"):
        table[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    table["delta"] = table["delta"].map(lambda v: "" if pd.isna(v) else f"{v:+.2f}")
    counts = frame["status"].value_counts()
    verdict = (f"{counts.get('regression', 0)} regression(s), {counts.get('improvement', 0)} improvement(s), "
               f"{counts.get('within noise', 0)} within noise, {counts.get('settings differ', 0)} with other "
               f"evaluation settings, {counts.get('pair differs', 0)} of another pair, {counts.get('new', 0)} new, "
               f"{counts.get('missing', 0)} missing ({metric})")
    unchecked = frame.loc[frame["unchecked"].eq(True), "label"].unique()
    if len(unchecked):
        verdict += (f"\nnot checked: whether {', '.join(unchecked)} used the same teacher and student init weights "
                    "(only one side's records carry their digests)")
    return table.to_markdown(index=False) + "\n\n" + verdict + "\n"


def history_frame(records: list[dict[str, Any]], metric: str = "rougeL", dataset: str | None = None) -> pd.DataFrame:
    """A metric across commits: one row per record x dataset, oldest first."""
    rows = []
    for r in sorted(records, key=lambda r: r["created"]):
        for name, s in r["scores"].items():
            if dataset and name != dataset:
                continue
            rows.append({"created": r["created"], "commit": (r.get("git_commit") or "")[:12], "label": r["label"],
                         "dataset": name, "mean": round(s[metric]["mean"], 2), "std": round(s[metric]["std"], 2)})
    return pd.DataFrame(rows, columns=["created", "commit", "label", "dataset", "mean", "std"])
