"""Numbers reported by papers, from a curated YAML file (``leaderboards/reported.yaml``).

Each entry names the paper, its table, the source the numbers were read from, the teacher/student
pair and the metric, with rows of per-dataset scores; a row may name the registry method it is
(``registry: kd``). Boards show the rows beside measured rows, marked as reported and never ranked
with them: they come from other code, hardware and often other checkpoints. What can be compared is
the order: :func:`rank_agreement` correlates a board's ranking of methods with each paper table's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mgsr_bench.config import NO_CHECKOUT, read_yaml
from mgsr_bench.errors import UserError

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "leaderboards" / "reported.yaml"
DATASETS = ("dolly", "selfinst", "vicuna", "sni", "unni")
MIN_SHARED = 3  # fewer shared methods give no rank correlation worth printing


def _check(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise UserError(f"{where}: each entry must be a mapping")
    for key in ("paper", "source", "pair", "metric", "rows"):
        if key not in entry:
            raise UserError(f"{where}: missing field {key!r}")
    pair = entry["pair"]
    if not isinstance(pair, dict) or not {"teacher", "student"} <= set(pair):
        raise UserError(f"{where}: field 'pair' needs teacher and student")
    if not isinstance(entry["rows"], list) or not entry["rows"]:
        raise UserError(f"{where}: field 'rows' must be a non-empty list")
    for j, row in enumerate(entry["rows"]):
        if not isinstance(row, dict) or "method" not in row or not isinstance(row.get("scores"), dict):
            raise UserError(f"{where}: rows[{j}] needs method and scores")
        if not isinstance(row.get("registry", ""), str):
            raise UserError(f"{where}: rows[{j}].registry must be a method name, like kd")
        for dataset, value in row["scores"].items():
            if dataset not in DATASETS:
                raise UserError(f"{where}: rows[{j}].scores has unknown dataset {dataset!r} "
                                f"(use {', '.join(DATASETS)})")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UserError(f"{where}: rows[{j}].scores.{dataset} must be a number")


def load_reported(path: str | Path = DEFAULT_FILE) -> list[dict[str, Any]]:
    """The file's entries, checked (each error names the entry and field)."""
    path = Path(path)
    if path == DEFAULT_FILE and not path.is_file():
        raise UserError(f"the reported scores ({path}) are not here: {NO_CHECKOUT}, "
                        "or name a file with --reported-file")
    entries = read_yaml(path, "reported-results")
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected a list of entries")
    for i, entry in enumerate(entries):
        _check(entry, f"{path}: entry {i + 1}")
    return entries


def reported_rows(entries: list[dict[str, Any]], pair: str) -> list[dict[str, Any]]:
    """Board rows for one ``teacher->student`` pair: method, short paper name, citation, metric, scores."""
    rows = []
    for e in entries:
        if f"{e['pair']['teacher']}->{e['pair']['student']}" != pair:
            continue
        short = e["paper"].split(" (")[0]
        citation = f"{e['paper']}" + (f", {e['table']}" if e.get("table") else "") + f"; read from {e['source']}"
        for row in e["rows"]:
            rows.append({"method": row["method"], "short": short, "citation": citation, "metric": e["metric"],
                         "scores": row["scores"], "registry": row.get("registry")})
    return rows


@dataclass
class RankAgreement:
    """How one paper table orders the methods it shares with a board."""

    citation: str
    methods: list[str]  # the shared registry methods, best first on the board
    reported_order: list[str]  # the same methods, best first in the paper
    rho: float  # Spearman's rank correlation; NaN under MIN_SHARED shared methods


def rank_agreement(averages: dict[str, float], rows: list[dict[str, Any]],
                   metric: str = "rougeL") -> list[RankAgreement]:
    """Spearman's rho between a board's averages (row label -> average) and each paper table's
    averages over the five datasets, over the methods both have: a reported row counts when its
    ``registry`` names a board row and it has all five datasets. Scores of other suites and pairs
    cannot be compared, but their order can: this is the check that a suite ranks methods as the
    field's benchmarks do."""
    tables: dict[str, dict[str, float]] = {}
    for row in rows:
        name = row.get("registry")
        if (row["metric"] == metric and not math.isnan(averages.get(name, math.nan))
                and set(DATASETS) <= set(row["scores"])):
            tables.setdefault(row["citation"], {})[name] = sum(row["scores"][d] for d in DATASETS) / len(DATASETS)
    out = []
    for citation, reported in tables.items():
        both = pd.DataFrame({"board": {m: averages[m] for m in reported}, "paper": reported})
        rho = float(both.corr(method="spearman").loc["board", "paper"]) if len(both) >= MIN_SHARED else math.nan
        out.append(RankAgreement(citation, list(both["board"].sort_values(ascending=False).index),
                                 list(both["paper"].sort_values(ascending=False).index), rho))
    return out


def agreement_text(agreements: list[RankAgreement]) -> str:
    """The markdown paragraph of :func:`rank_agreement`'s results."""
    shown = [a for a in agreements if len(a.methods) >= MIN_SHARED]
    if not shown:
        return ("Rank agreement with the reported rows: no reported table shares three methods with these rows "
                "(a reported row counts when its `registry` names a row here and it has all five datasets).\n")
    lines = ["Rank agreement with the reported rows (Spearman's rho over the methods both rank, each reported "
             "row's average over its five datasets):", ""]
    for a in shown:
        lines.append(f"- rho = {a.rho:+.2f} over {len(a.methods)} methods against {a.citation}: here "
                     f"{' > '.join(a.methods)}; there {' > '.join(a.reported_order)}")
    return "\n".join(lines) + "\n"
