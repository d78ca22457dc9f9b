"""Numbers reported by papers, from a curated YAML file (``leaderboards/reported.yaml``).

Each entry names the paper, its table, the source the numbers were read from, the teacher/student
pair and the metric, with rows of per-dataset scores. Boards show them beside measured rows, marked
as reported and never ranked with them: they come from other code, hardware and often other
checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mgsr_bench.config import NO_CHECKOUT, read_yaml
from mgsr_bench.errors import UserError

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "leaderboards" / "reported.yaml"
DATASETS = ("dolly", "selfinst", "vicuna", "sni", "unni")


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
                         "scores": row["scores"]})
    return rows
