"""Regression checks between two sets of run records, and a metric's history across commits.

A drop counts as a regression only when it exceeds the noise: ``max(tolerance, k * se)``, where
``se = sqrt(var_new + var_base)`` is the standard error of the difference of the two sides' means
(:func:`side_variance`). A side of one training run has ``var = std^2 / n`` (its sampling std over
``n`` sampling seeds), which sees decoding noise only: the tolerance is there for the training noise
it does not see. A side of several runs (training seeds, rows as :func:`latest_per_seed` forms them)
has ``var = max(S^2 / m, sum_i(std_i^2 / n_i) / m^2)``: ``S`` the sample std of its ``m`` runs'
means, which holds training and sampling noise alike, floored by the sampling noise alone, which
``S`` from two or three runs can underestimate. When only one side has several runs, its ``S^2``
stands for the single run's spread too (a run of the same recipe retrained): that side's variance
is ``max(std^2 / n, S^2)``. The report's ``noise`` column says which applied to each row.

Rows whose evaluation settings differ (seeds, decoding, lengths) are not compared, nor rows scored on
other examples of a dataset (another count, or another digest where both records carry one), nor rows of
another teacher/student pair: another pair name, or, where both records carry them, other digests
of the teacher's or the student init's weights (two builds of the tiny suite can differ). Records
without digests (made before they were recorded, or of Hub models) are compared on the pair name
alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mgsr_bench.results.leaderboard import latest_per_seed, md, sample_std

STATUSES = ("regression", "not finite", "improvement", "within noise", "settings differ", "data differs",
            "pair differs", "new", "missing")
_PHRASES = {"settings differ": "with other evaluation settings", "data differs": "on other examples",
            "pair differs": "of another pair"}
COMPARED = ("regression", "improvement", "within noise")  # the rows whose two sides were compared
# compare's exit status: 2 (mgsr-bench's usage and input errors, a record that cannot be read or is
# invalid among them) is set by the command line
PASSED, REGRESSION, INCOMPLETE = 0, 1, 4
WEIGHTS = ("teacher_weights", "student_weights")  # the pair's weight digests in a record (tiny suite)


def pair_differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records come from different models: pair names, or weight digests both of them hold."""
    pa, pb = a.get("pair", {}), b.get("pair", {})
    return pa.get("name") != pb.get("name") or any(k in pa and k in pb and pa[k] != pb[k] for k in WEIGHTS)


def data_differs(a: dict[str, Any], b: dict[str, Any], dataset: str) -> bool:
    """Whether two records scored ``dataset`` on different examples: counts, or digests both hold."""
    sa, sb = a["scores"][dataset], b["scores"][dataset]
    return sa["n"] != sb["n"] or ("data_sha256" in sa and "data_sha256" in sb and sa["data_sha256"] != sb["data_sha256"])


def digest_on_one_side(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether one record carries the pair's weight digests and the other does not (they cannot be checked)."""
    return any((k in a.get("pair", {})) != (k in b.get("pair", {})) for k in WEIGHTS)


@dataclass
class Side:
    """One row's runs on one dataset, on one side of a comparison: each run's mean, sampling std and
    number of sampling seeds."""

    means: list[float]
    stds: list[float]
    seeds: list[int]

    @classmethod
    def of(cls, runs: list[dict[str, Any]], dataset: str, metric: str) -> "Side":
        scores = [r["scores"][dataset] for r in runs]
        return cls([s[metric]["mean"] for s in scores], [s[metric]["std"] for s in scores],
                   [max(len(s["per_seed"]), 1) for s in scores])

    @property
    def runs(self) -> int:
        return len(self.means)

    @property
    def mean(self) -> float:
        return sum(self.means) / self.runs

    @property
    def std(self) -> float:
        """The spread shown: the sampling std of one run, the sample std over training seeds of several."""
        return self.stds[0] if self.runs == 1 else sample_std(self.means)

    @property
    def sampling_variance(self) -> float:
        """The variance of :attr:`mean` from decoding alone."""
        return sum(s ** 2 / n for s, n in zip(self.stds, self.seeds)) / self.runs ** 2


def side_variance(side: Side, other: Side) -> float:
    """The variance of ``side.mean`` (the module's docstring gives the formula): from the spread
    over training seeds where there are several runs, on this side or else on the other."""
    if side.runs > 1:
        return max(sample_std(side.means) ** 2 / side.runs, side.sampling_variance)
    if other.runs > 1:
        return max(side.sampling_variance, sample_std(other.means) ** 2)
    return side.sampling_variance


def noise_used(new: Side, base: Side) -> str:
    """Which noise a row's threshold counts: ``sampling`` or the training seeds of each side."""
    if new.runs == 1 and base.runs == 1:
        return "sampling"
    return f"training seeds (new {new.runs}, base {base.runs})"


def compare_records(new: list[dict[str, Any]], base: list[dict[str, Any]], metric: str = "rougeL",
                    tolerance: float = 0.5, k: float = 2.0) -> pd.DataFrame:
    """One row per row label (group) x dataset present on either side, with the decision."""
    if tolerance < 0 or k < 0:
        raise ValueError("tolerance and k must be >= 0")
    old, cur = latest_per_seed(base), latest_per_seed(new)
    rows = []
    for label in sorted(set(old) | set(cur)):
        datasets = sorted({d for r in old.get(label, []) + cur.get(label, []) for d in r["scores"]})
        for dataset in datasets:
            row: dict[str, Any] = {"label": label, "dataset": dataset}
            b = [r for r in old.get(label, []) if dataset in r["scores"]]
            n = [r for r in cur.get(label, []) if dataset in r["scores"]]
            if not b or not n:
                rows.append({**row, "status": "new" if not b else "missing"})
                continue
            if any(x["evaluation"] != y["evaluation"] for x in b for y in n):
                rows.append({**row, "status": "settings differ"})
                continue
            if any(data_differs(x, y, dataset) for x in b for y in n):
                rows.append({**row, "status": "data differs"})
                continue
            if any(pair_differs(x, y) for x in b for y in n):
                rows.append({**row, "status": "pair differs"})
                continue
            row["unchecked"] = any(digest_on_one_side(x, y) or
                                   ("data_sha256" in x["scores"][dataset]) != ("data_sha256" in y["scores"][dataset])
                                   for x in b for y in n)
            decided = _decide(Side.of(n, dataset, metric), Side.of(b, dataset, metric), tolerance, k)
            if not all(math.isfinite(decided[c]) for c in ("base", "new", "delta", "threshold")):
                decided["status"] = "not finite"
            rows.append({**row, **decided})
    return pd.DataFrame(rows, columns=["label", "dataset", "base", "base_std", "new", "new_std", "delta",
                                       "threshold", "status", "noise", "unchecked"])


def _decide(new: Side, base: Side, tolerance: float, k: float) -> dict[str, Any]:
    """The difference of the two means, its threshold and the status."""
    se = math.sqrt(side_variance(new, base) + side_variance(base, new))
    threshold = max(tolerance, k * se)
    delta = new.mean - base.mean
    status = "regression" if delta < -threshold else "improvement" if delta > threshold else "within noise"
    return {"base": base.mean, "base_std": base.std, "new": new.mean, "new_std": new.std, "delta": delta,
            "threshold": threshold, "status": status, "noise": noise_used(new, base)}


def gate(frame: pd.DataFrame, allow_missing: bool = False) -> tuple[int, str]:
    """The exit status of a comparison and its one-line summary: :data:`REGRESSION` when a row
    regressed; else :data:`INCOMPLETE` when a compared row's numbers are not finite, when rows of
    the baseline are missing from the new records (unless ``allow_missing``), or when no row was
    compared at all (no rows, or every row new, missing, or of other settings, examples or pair);
    else :data:`PASSED`."""
    counts = frame["status"].value_counts()

    def rows(status: str) -> str:
        found = frame.loc[frame["status"] == status, ["label", "dataset"]]
        shown = [f"{md(label)}/{md(dataset)}" for label, dataset in found.itertuples(index=False)]
        return ", ".join(shown[:10]) + (f" and {len(shown) - 10} more" if len(shown) > 10 else "")

    problems = []
    if counts.get("regression", 0):
        problems.append(f"{counts['regression']} regression(s): {rows('regression')}")
    if counts.get("not finite", 0):
        problems.append(f"{counts['not finite']} row(s) with numbers that are not finite: {rows('not finite')}")
    if counts.get("missing", 0) and not allow_missing:
        problems.append(f"{counts['missing']} row(s) of the baseline missing from the new records: {rows('missing')} "
                        "(--allow-missing accepts them)")
    if not sum(counts.get(s, 0) for s in COMPARED):
        problems.append("nothing compared (" + ("no rows" if frame.empty else ", ".join(
            f"{n} {_PHRASES.get(status, status)}" for status, n in counts.items())) + ")")
    if not problems:
        compared = sum(counts.get(s, 0) for s in COMPARED)
        return PASSED, f"gate: pass ({compared} row(s) compared" + (
            f", {counts['missing']} missing, accepted by --allow-missing)" if counts.get("missing", 0) else ")")
    code = REGRESSION if counts.get("regression", 0) else INCOMPLETE
    return code, f"gate: fail (exit {code}): " + "; ".join(problems)


def render_comparison(frame: pd.DataFrame, metric: str, allow_missing: bool = False) -> str:
    """A readable report: regressions first, then the rows that fail the gate, improvements, the rest,
    a count of each status and the gate's one-line summary (:func:`gate`), last."""
    order = {s: i for i, s in enumerate(STATUSES)}
    shown = frame.sort_values(by=["status", "label", "dataset"], key=lambda c: c.map(order) if c.name == "status" else c)
    table = shown.drop(columns="unchecked").astype({"noise": object}).fillna({"noise": ""})
    table["label"], table["dataset"] = table["label"].map(md), table["dataset"].map(md)
    for col in ("base", "base_std", "new", "new_std", "threshold"):
        table[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    table["delta"] = table["delta"].map(lambda v: "" if pd.isna(v) else f"{v:+.2f}")
    counts = frame["status"].value_counts()
    verdict = (f"{counts.get('regression', 0)} regression(s), {counts.get('improvement', 0)} improvement(s), "
               f"{counts.get('within noise', 0)} within noise, {counts.get('settings differ', 0)} with other "
               f"evaluation settings, {counts.get('data differs', 0)} on other examples, "
               f"{counts.get('pair differs', 0)} of another pair, {counts.get('new', 0)} new, "
               f"{counts.get('missing', 0)} missing" + (f", {counts['not finite']} not finite" if
                                                        counts.get("not finite", 0) else "") + f" ({metric})")
    unchecked = frame.loc[frame["unchecked"].eq(True), "label"].unique()
    if len(unchecked):
        verdict += (f"\nnot checked: whether {', '.join(map(md, unchecked))} used the same teacher and student "
                    "init weights and the same examples (only one side's records carry their digests)")
    return table.to_markdown(index=False) + "\n\n" + verdict + "\n" + gate(frame, allow_missing)[1] + "\n"


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
