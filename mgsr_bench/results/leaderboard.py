"""Methods x datasets tables from run records: markdown, CSV, LaTeX (booktabs) and a sortable HTML page.

A :class:`Board` holds the numbers (pandas): per row the mean and the std of each dataset, the
average of the dataset means, and the difference of that average from a reference row. A row is a
record's group (the label without its training seed, :func:`record_group`) with the newest record
of each training seed: one run gives its mean ± std over sampling seeds; several runs give the
mean over training seeds of each run's mean, ± the sample std over training seeds, because
retraining moves a score more than resampling one model does. The teacher (an upper bound, not a
competitor) and rows *reported by papers* (:mod:`mgsr_bench.results.reported`) are shown but never
ranked: the best value of each column is taken over measured student rows only.
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from mgsr_bench.errors import UserError
from mgsr_bench.results.record import record_group, record_seed
from mgsr_bench.results.reported import agreement_text, rank_agreement
from mgsr_bench.results.store import ResultsStore

# Rows in this order first (teacher on top, then the SFT reference), the rest alphabetically.
_FIRST = ("teacher", "sft")
FORMATS = ("markdown", "csv", "latex", "html")
METRICS = {"rougeL": "ROUGE-L", "exact_match": "Exact match"}
# Columns: the tiny suite's splits, then the protocol's sets in the papers' order, then the rest A-Z.
DATASET_ORDER = ("test", "shifted", "dolly", "selfinst", "vicuna", "sni", "unni")


def load_records(folder: str | Path, **filters: Any) -> list[dict[str, Any]]:
    """Every run record under ``folder`` (recursively) that matches the store filters; other JSON is ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder not found: {folder}")
    records = ResultsStore(folder).records(**filters)
    if not records:
        raise UserError(f"no run records in {folder}" + (" match the filters" if any(filters.values()) else
                                                          f" (run `mgsr-bench run --out {folder}` first)"))
    return records


def _row_order(name: str) -> tuple[int, str]:
    return (_FIRST.index(name) if name in _FIRST else len(_FIRST), name)


def latest_per_label(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each label, teacher and sft first, then alphabetical."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["label"] not in latest or r["created"] >= latest[r["label"]]["created"]:
            latest[r["label"]] = r
    return [latest[lbl] for lbl in sorted(latest, key=_row_order)]


def latest_per_seed(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per row (:func:`record_group`), the newest record of each training seed, in seed order; rows
    teacher and sft first, then alphabetical. A group's plain-label record and its ``@seed`` record
    of the same seed are one run: the newer is kept."""
    latest: dict[tuple[str, int | None], dict[str, Any]] = {}
    for r in records:
        key = (record_group(r), record_seed(r))
        if key not in latest or r["created"] >= latest[key]["created"]:
            latest[key] = r
    rows: dict[str, list[dict[str, Any]]] = {}
    for (group, seed), r in sorted(latest.items(), key=lambda kv: (kv[0][1] is not None, kv[0][1] or 0)):
        rows.setdefault(group, []).append(r)
    return {name: rows[name] for name in sorted(rows, key=_row_order)}


def select_rows(records: list[dict[str, Any]], names: list[str] | None) -> list[dict[str, Any]]:
    """Records whose label or group is one of ``names``, or whose method is a name that is no label
    (all when None)."""
    if not names:
        return records
    labels = {r["label"] for r in records} | {record_group(r) for r in records}
    missing = sorted(set(names) - labels - {r["method"] for r in records})
    if missing:
        raise UserError(f"no records for {', '.join(missing)}; the records have {', '.join(sorted(labels))}")
    return [r for r in records if r["label"] in names or record_group(r) in names
            or (r["method"] in names and r["method"] not in labels)]


@dataclass
class Board:
    """The numbers of one table. ``kind`` per row: ``measured``, ``teacher`` or ``reported``."""

    metric: str
    means: pd.DataFrame  # rows x datasets
    stds: pd.DataFrame  # rows x datasets (NaN for reported rows)
    kind: dict[str, str]
    reference: str | None = None
    notes: dict[str, str] = field(default_factory=dict)  # row -> citation, for reported rows
    # row -> its runs' training seeds (None for a run of no training seed: the teacher, eval's records)
    seeds: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    # row -> sample std over training seeds of each run's average (NaN for a row of one run)
    avg_stds: dict[str, float] = field(default_factory=dict)
    # row -> training device-seconds, the mean over its runs (absent: no run with a training cost)
    costs: dict[str, float] = field(default_factory=dict)
    provenance: list[str] = field(default_factory=list)  # where the numbers come from (:func:`provenance`)

    def cost(self, row: str) -> float:
        return self.costs.get(row, math.nan)

    @property
    def datasets(self) -> list[str]:
        return list(self.means.columns)

    def runs(self, row: str) -> int:
        """How many training runs (seeds) a row aggregates; 0 for a reported row."""
        return len(self.seeds.get(row, ()))

    @property
    def several_seeds(self) -> bool:
        """Whether some row aggregates several training seeds (the tables then name each row's seeds)."""
        return any(self.runs(r) > 1 for r in self.means.index)

    @property
    def avg(self) -> pd.Series:
        """Mean over the datasets; NaN for a row missing any of them."""
        return self.means.mean(axis=1, skipna=False)

    @property
    def delta(self) -> pd.Series | None:
        if self.reference is None:
            return None
        out = self.avg - self.avg[self.reference]
        return out.where(pd.Series({r: self.kind[r] != "reported" for r in out.index}))

    def best(self) -> dict[str, float]:
        """Per column (datasets and ``avg``) the best value among measured rows."""
        measured = [r for r in self.means.index if self.kind[r] == "measured"]
        table = self.means.assign(avg=self.avg).loc[measured]
        return {c: table[c].max() for c in table.columns} if measured else {}


def build_board(records: list[dict[str, Any]], metric: str = "rougeL", reference: str | None = None,
                datasets: list[str] | None = None, labels: list[str] | None = None,
                reported: list[dict[str, Any]] | None = None) -> Board:
    """One metric's board from records (per group, the newest record of each training seed), with
    reported rows appended."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; use {' or '.join(METRICS)}")
    rows = latest_per_seed(select_rows(records, labels))
    found = {d for runs in rows.values() for r in runs for d in r["scores"]}
    all_sets = [d for d in DATASET_ORDER if d in found] + sorted(found - set(DATASET_ORDER))
    chosen = datasets or all_sets
    unknown = [d for d in chosen if d not in all_sets]
    if unknown:
        raise UserError(f"no scores for dataset(s) {', '.join(unknown)}; the records have {', '.join(all_sets)}")
    check_same_examples(rows, chosen)
    numbers = {name: row_numbers(runs, chosen, metric) for name, runs in rows.items()}
    means = pd.DataFrame({d: {name: n.means[d] for name, n in numbers.items()} for d in chosen})
    stds = pd.DataFrame({d: {name: n.stds[d] for name, n in numbers.items()} for d in chosen})
    kind = {name: "teacher" if runs[0]["method"] == "teacher" else "measured" for name, runs in rows.items()}
    seeds = {name: tuple(record_seed(r) for r in runs) for name, runs in rows.items()}
    avg_stds = {name: n.avg_std for name, n in numbers.items()}
    costs = {}
    for name, runs in rows.items():
        found = [cost["device_seconds"] for cost in map(run_cost, runs) if cost is not None]
        if found:
            costs[name] = _mean(found)
    notes: dict[str, str] = {}
    for rep in reported or []:
        if rep["metric"] != metric:
            continue
        label = f"{rep['method']} [{rep['short']}]"
        means.loc[label] = [rep["scores"].get(d, math.nan) for d in chosen]
        stds.loc[label] = [math.nan] * len(chosen)
        kind[label] = "reported"
        notes[label] = rep["citation"]
    if reference is not None and reference not in kind:
        raise UserError(f"--reference {reference!r} is not a row; rows: {', '.join(kind)}")
    return Board(metric, means, stds, kind, reference, notes, seeds, avg_stds, costs,
                 provenance([r for runs in rows.values() for r in runs]))


def run_cost(record: dict[str, Any]) -> dict[str, Any] | None:
    """A record's training cost (``training.cost``), or None for a record of no training run."""
    return (record.get("training") or {}).get("cost")


def _spread(values: list[str]) -> str:
    values = sorted(set(values))
    return values[0] if len(values) == 1 else f"{values[0]} to {values[-1]}"


def provenance(records: list[dict[str, Any]]) -> list[str]:
    """Where a table's numbers come from, one line each: the suite or pair with its weight digests, the
    training and sampling seeds, the commits, the dates and the machines of its records."""
    if not records:
        return []
    pairs = set()
    for r in records:  # one entry per pair and weights: two builds of one suite are two entries
        pair = r.get("pair") or {}
        digests = (f" (teacher {pair['teacher_weights']}, student {pair['student_weights']})"
                   if pair.get("teacher_weights") and pair.get("student_weights") else "")
        pairs.add(pair.get("name", "?") + digests)
    training = sorted({s for s in map(record_seed, records) if s is not None})
    sampling = sorted({s for r in records for s in (r.get("evaluation") or {}).get("seeds") or []})
    commits = sorted({r["git_commit"][:8] if r.get("git_commit") else "no commit" for r in records})
    machines = sorted({f"{m.get('device', '?')} ({m.get('processor', '?')}, {m.get('cpu_kernels', '?')})"
                       for m in (r.get("machine") or {} for r in records)})
    lines = [f"suite or pair: {'; '.join(sorted(pairs))}",
             f"training seeds: {', '.join(map(str, training)) or 'none'}; sampling seeds: "
             f"{', '.join(map(str, sampling)) or 'none'}",
             f"commits: {', '.join(commits)}; dates: {_spread([r['created'][:10] for r in records])}; "
             f"machines: {'; '.join(machines)}"]
    return [re.sub(r"\s+", " ", line) for line in lines]  # names are text: a line break would end a caption line


def check_same_examples(rows: dict[str, list[dict[str, Any]]], datasets: list[str]) -> None:
    """Refuse a board whose rows scored a dataset on different examples (another count, or another
    digest among the records that carry one): their numbers are not one benchmark's."""
    for d in datasets:
        scored = [(name, r["scores"][d]) for name, runs in rows.items() for r in runs if d in r["scores"]]
        counts = {s["n"] for _, s in scored}
        digests = {s["data_sha256"] for _, s in scored if "data_sha256" in s}
        if len(counts) > 1 or len(digests) > 1:
            which = sorted({f"{name} (n {s['n']}, {s.get('data_sha256', 'no digest')})" for name, s in scored})
            raise UserError(f"rows scored {d} on different examples: {'; '.join(which)}; re-evaluate them on one "
                            "file, or leave some out with --labels")


@dataclass
class RowNumbers:
    """One row's numbers: per dataset the mean and its spread, and the spread of the average."""

    means: dict[str, float]
    stds: dict[str, float]
    avg_std: float


def row_numbers(runs: list[dict[str, Any]], datasets: list[str], metric: str) -> RowNumbers:
    """A row of one run: its mean ± std over sampling seeds. A row of several runs (training
    seeds): the mean of the runs' means ± their sample std, and the sample std of the runs'
    averages over ``datasets``. A dataset that some run lacks is NaN, as the average then is."""
    per_run = [{d: r["scores"][d][metric]["mean"] if d in r["scores"] else math.nan for d in datasets}
               for r in runs]
    if len(runs) == 1:
        stds = {d: runs[0]["scores"][d][metric]["std"] if d in runs[0]["scores"] else math.nan for d in datasets}
        return RowNumbers(per_run[0], stds, math.nan)
    columns = {d: [run[d] for run in per_run] for d in datasets}
    averages = [_mean(list(run.values())) for run in per_run]
    return RowNumbers({d: _mean(v) for d, v in columns.items()}, {d: sample_std(v) for d, v in columns.items()},
                      sample_std(averages))


def _mean(values: list[float]) -> float:
    """The mean; NaN for no values or when one is NaN (a missing score)."""
    return sum(values) / len(values) if values else math.nan


def sample_std(values: list[float]) -> float:
    """The sample standard deviation (n - 1); NaN for fewer than two values or when one is NaN."""
    if len(values) < 2:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# --- rendering ------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"[\\`*<>|~&]|\](?=[(\[:])|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def md(text: Any) -> str:
    """``text`` as literal markdown in a table cell: ``|`` (which would end the cell), emphasis,
    code, HTML and entity characters backslash-escaped, and the ``]`` of what would be a link (an
    ``_`` inside a word, and brackets that make no link, are literal already and stay as they are);
    line breaks (which would end the row) as spaces."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), re.sub(r"[\r\n\t\v\f]+", " ", str(text)))


def md_frame(frame: pd.DataFrame) -> str:
    """A frame as a markdown table (pandas), its row and column names escaped with :func:`md`."""
    shown = frame.copy()
    shown.index = [md(i) for i in shown.index]
    shown.columns = [md(c) for c in shown.columns]
    return shown.to_markdown()


def _num(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


#: the tables' cost column: training device-seconds (wall time x processes), the mean over a row's runs
COST_COLUMN = "train device-s"


def _seconds(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.0f}"


def _signed(v: float) -> str:
    return "" if v is None or math.isnan(v) else f"{v:+.2f}"


def _cells(board: Board, row: str, sep: str = " ± ") -> dict[str, str]:
    """Text per column (datasets, avg) for one row; reported rows have no std."""
    out = {}
    for d in board.datasets:
        mean, std = board.means.at[row, d], board.stds.at[row, d]
        out[d] = _num(mean) if math.isnan(std) else f"{_num(mean)}{sep}{_num(std)}"
    out["avg"] = _num(board.avg[row])
    if board.runs(row) > 1 and not math.isnan(board.avg_stds[row]):
        out["avg"] += f"{sep}{_num(board.avg_stds[row])}"
    return out


def _seed_list(board: Board, row: str) -> list[int]:
    """A row's training seeds; none for the teacher, ``eval``'s and reported rows."""
    return [seed for seed in board.seeds.get(row, ()) if seed is not None]


def _seeds_text(board: Board, row: str) -> str:
    """``n=3: 1, 2, 3`` (how many training runs the row holds, and their seeds), or – for none."""
    seeds = _seed_list(board, row)
    return f"n={len(seeds)}: {', '.join(map(str, seeds))}" if seeds else "–"


def _is_best(board: Board, row: str, column: str, best: dict[str, float]) -> bool:
    value = board.avg[row] if column == "avg" else board.means.at[row, column]
    return board.kind[row] == "measured" and column in best and not math.isnan(value) \
        and math.isclose(value, best[column], abs_tol=1e-9)


def _title(board: Board, escape: Any = str) -> str:
    spread = ("mean ± std: over sampling seeds for a row of one training run; for a row of several, the mean "
              "over its training seeds of each run's mean ± the sample std over training seeds"
              if board.several_seeds else "mean ± std over seeds")
    return f"{METRICS[board.metric]} ({spread}; best measured value in bold" + \
        (f"; Δ avg against {escape(board.reference)})" if board.reference else ")")


def to_markdown(board: Board) -> str:
    best = board.best()
    seeds = ["training seeds"] if board.several_seeds else []
    columns = ["method", *seeds, *map(md, board.datasets), "avg"] + ([f"Δ vs {md(board.reference)}"]
                                                                      if board.reference else []) + [COST_COLUMN]
    lines = ["| " + " | ".join(columns) + " |",
             "|:--|" + ":--|" * len(seeds) + "--:|" * (len(columns) - 1 - len(seeds))]
    delta = board.delta
    for row in board.means.index:
        cells = _cells(board, row)
        texts = [f"**{cells[c]}**" if _is_best(board, row, c, best) else cells[c] for c in [*board.datasets, "avg"]]
        name = {"teacher": f"{md(row)} (teacher)" if row != "teacher" else row,
                "reported": f"{md(row)} †"}.get(board.kind[row], md(row))
        if delta is not None:
            texts.append(_signed(delta[row]))
        texts.append(_seconds(board.cost(row)))
        lines.append("| " + " | ".join([name, *([_seeds_text(board, row)] if seeds else []), *texts]) + " |")
    notes = [f"† reported by {md(board.notes[r])}; not measured here and not ranked." for r in board.means.index
             if board.kind[r] == "reported"]
    caption = [md("Provenance: " + " · ".join(board.provenance))] if board.provenance else []
    return "\n".join([_title(board, md), "", *lines, *([""] + sorted(set(notes)) if notes else []),
                      *([""] + caption if caption else [])]) + "\n"


def to_csv(board: Board) -> str:
    frame = pd.DataFrame(index=board.means.index)
    frame["kind"] = [board.kind[r] for r in frame.index]
    if board.several_seeds:
        frame["training_seeds"] = [" ".join(map(str, _seed_list(board, r))) for r in frame.index]
        frame["n_training_seeds"] = pd.array([len(_seed_list(board, r)) or None for r in frame.index], dtype="Int64")
    for d in board.datasets:
        frame[f"{d}_mean"] = board.means[d].round(4)
        frame[f"{d}_std"] = board.stds[d].round(4)
    frame["avg"] = board.avg.round(4)
    if board.several_seeds:
        frame["avg_std"] = pd.Series(board.avg_stds).reindex(frame.index).round(4)
    if board.delta is not None:
        frame[f"delta_vs_{board.reference}"] = board.delta.round(4)
    frame["train_device_seconds"] = [round(board.cost(r), 2) for r in frame.index]
    return frame.to_csv(index_label="method")


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(board: Board) -> str:
    """A booktabs tabular; needs ``\\usepackage{booktabs}``. Reported rows sit below a rule, marked \\dag."""
    best = board.best()
    delta = board.delta
    seeds = ["$n$"] if board.several_seeds else []  # training runs per row
    columns = ["Method", *seeds, *board.datasets, "Avg."] + (
        [f"$\\Delta$ vs {_tex(board.reference)}"] if delta is not None else []) + ["Train (device-s)"]
    lines = [f"% {_title(board)}", *(f"% {line}" for line in board.provenance), "\\begin{tabular}{l" + "c" * (len(columns) - 1) + "}", "\\toprule",
             " & ".join(_tex(c) if not c.startswith("$") else c for c in columns) + " \\\\", "\\midrule"]
    previous = None
    for row in board.means.index:
        if board.kind[row] == "reported" and previous != "reported":
            lines.append("\\midrule")
        previous = board.kind[row]
        cells = _cells(board, row, sep=" $\\pm$ ")
        texts = [f"\\textbf{{{cells[c]}}}" if _is_best(board, row, c, best) else cells[c]
                 for c in [*board.datasets, "avg"]]
        name = _tex(row) + {"teacher": " (teacher)" if row != "teacher" else "",
                            "reported": "$^\\dag$"}.get(board.kind[row], "")
        if delta is not None:
            texts.append(_signed(delta[row]).replace("-", "$-$") if not math.isnan(delta[row]) else "")
        texts.append(_seconds(board.cost(row)))
        runs = [str(len(_seed_list(board, row)) or "–")] if seeds else []
        lines.append(" & ".join([name, *runs, *texts]).replace("–", "--") + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    notes = sorted({board.notes[r] for r in board.means.index if board.kind[r] == "reported"})
    if notes:
        lines.append("% \\dag: reported by " + "; ".join(notes) + " (not measured here, not ranked)")
    return "\n".join(lines) + "\n"


_SORT_SCRIPT = """
function sortBy(th) {
  const table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
  const asc = th.getAttribute('aria-sort') !== 'ascending';
  for (const h of table.tHead.rows[0].cells) h.removeAttribute('aria-sort');
  th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
  const key = r => { const c = r.cells[col]; const v = c.dataset.value; return v === undefined ? c.textContent : Number(v); };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (typeof x === 'number' && isNaN(x)) return 1;
    if (typeof y === 'number' && isNaN(y)) return -1;
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
  });
  rows.forEach(r => body.appendChild(r));
}
document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('th').forEach(th => th.addEventListener('click', () => sortBy(th)));
  const m = location.hash.match(/^#sort=(\\d+)(-desc)?$/);  // a link can open the page sorted
  if (m) { const th = document.querySelectorAll('thead th')[Number(m[1])]; sortBy(th); if (m[2]) sortBy(th); }
});
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; } caption { text-align: left; margin-bottom: .5em; font-weight: 600; }
th, td { padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { cursor: pointer; user-select: none; border-bottom: 2px solid #444; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
tr.teacher td { color: #666; } tr.reported td { font-style: italic; color: #555; background: #f6f6f6; }
td.best { font-weight: 700; } .note { color: #555; font-size: .9em; }
.provenance { font-weight: 400; font-size: .85em; color: #555; }
"""


def to_html(board: Board, title: str = "mgsr-bench leaderboard") -> str:
    """A self-contained page (inline CSS and JS, no network): click a header to sort by it."""
    best = board.best()
    delta = board.delta
    seeds = ["training seeds"] if board.several_seeds else []
    columns = (["method", *seeds, *board.datasets, "avg"] + ([f"Δ vs {board.reference}"] if delta is not None else [])
               + [COST_COLUMN])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in board.means.index:
        cells = _cells(board, row)
        tds = [f'<td data-value="{html.escape(row, quote=True)}">{html.escape(row)}'
               + (" †" if board.kind[row] == "reported" else "") + "</td>"]
        if seeds:  # sorts by the number of runs
            tds.append(f'<td data-value="{len(_seed_list(board, row))}">{html.escape(_seeds_text(board, row))}</td>')
        for c in [*board.datasets, "avg"]:
            value = board.avg[row] if c == "avg" else board.means.at[row, c]
            cls = ' class="best"' if _is_best(board, row, c, best) else ""
            tds.append(f'<td{cls} data-value="{"NaN" if math.isnan(value) else repr(float(value))}">'
                       f"{html.escape(cells[c])}</td>")
        if delta is not None:
            d = delta[row]
            tds.append(f'<td data-value="{"NaN" if math.isnan(d) else repr(float(d))}">{_signed(d)}</td>')
        cost = board.cost(row)
        tds.append(f'<td data-value="{"NaN" if math.isnan(cost) else repr(float(cost))}">{_seconds(cost)}</td>')
        body.append(f'<tr class="{board.kind[row]}">' + "".join(tds) + "</tr>")
    notes = sorted({board.notes[r] for r in board.means.index if board.kind[r] == "reported"})
    note = ("<p class=\"note\">† reported by " + html.escape("; ".join(notes)) + "; not measured here and not ranked.</p>"
            if notes else "")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script>{_SORT_SCRIPT}</script></head><body>\n"
            f"<table><caption>{html.escape(_title(board))}"
            + "".join(f'<br><span class="provenance">{html.escape(line)}</span>' for line in board.provenance)
            + f"</caption><thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + f"\n</tbody></table>\n{note}\n</body></html>\n")


# --- the markdown report's extra tables -----------------------------------------------------------

def _mean_per_key(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Per key of any of ``dicts``, the mean over those that hold it (first seen first)."""
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    return {k: sum(d[k] for d in dicts if k in d) / sum(k in d for d in dicts) for k in keys}


def _family_means(record: dict[str, Any], dataset: str, metric: str) -> dict[str, float] | None:
    """One run's per-family ``metric`` on ``dataset``, mean over its sampling seeds (None without families)."""
    per_seed = record["scores"].get(dataset, {}).get("per_seed", {})
    fams = [s[f"family_{metric}"] for s in per_seed.values() if f"family_{metric}" in s]
    return _mean_per_key(fams) if fams else None


def family_frame(records: list[dict[str, Any]], dataset: str, metric: str = "exact_match") -> pd.DataFrame | None:
    """Per-family ``metric`` (``exact_match`` or ``rougeL``) on one dataset per row (mean over
    sampling seeds; over the training seeds' runs, the mean of those means), or None when records
    carry no families. A family that some seeds or runs lack is the mean of those that hold it."""
    rows = {}
    for name, runs in latest_per_seed(records).items():
        found = [f for f in (_family_means(r, dataset, metric) for r in runs) if f is not None]
        if found:
            rows[name] = _mean_per_key(found)
    return pd.DataFrame.from_dict(rows, orient="index").round(1) if rows else None


def training_frame(records: list[dict[str, Any]]) -> pd.DataFrame | None:
    """Per trained run: steps, seconds per step, training minutes, best step, the share of steps per source,
    and what the run's ``training.cost`` holds: device-seconds and device, the positions through the
    teacher, the tokens sampled, and the FLOP estimate (:func:`mgsr_bench.train.cost.estimated_flops`).

    The sources are where each step's responses came from (``ground_truth``, fresh ``student``
    or ``teacher`` samples, a ``replay`` of stored samples, or ``both``); ``scrg`` is the mean
    fraction of rows SCRG corrected on the steps where it ran.
    """
    rows = {}
    for r in latest_per_label(records):
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
        row.update(_cost_cells(r))
        rows[r["label"]] = row
    return pd.DataFrame.from_dict(rows, orient="index").astype(object).fillna("") if rows else None


def _cost_cells(record: dict[str, Any]) -> dict[str, Any]:
    """The training-cost table's cells for one run (none for a record without ``training.cost``; the
    counts only where it holds them)."""
    from mgsr_bench.train.cost import estimated_flops

    cost = run_cost(record)
    if cost is None:
        return {}
    cells: dict[str, Any] = {"device-s": round(cost["device_seconds"]), "device": cost["device"]}
    if "teacher_forward_tokens" in cost:
        pair = record.get("pair") or {}
        cells["teacher tokens"] = cost["teacher_forward_tokens"]
        cells["generated tokens"] = cost["generated_tokens"]
        if pair.get("student_params") and pair.get("teacher_params") is not None:
            cells["est. TFLOP"] = round(estimated_flops(cost, pair["student_params"], pair["teacher_params"]) / 1e12, 2)
    return cells


def lm_eval_frame(records: list[dict[str, Any]]) -> pd.DataFrame | None:
    """lm-eval scores per row (task / metric columns), when any record has them."""
    rows = {r["label"]: {f"{task} {metric.split(',')[0]}": value for task, metrics in r["lm_eval"].items()
                         for metric, value in metrics.items() if metric != "sample_len"}
            for r in latest_per_label(records) if r.get("lm_eval")}
    return pd.DataFrame.from_dict(rows, orient="index").round(4) if rows else None


def render_leaderboard(records: list[dict[str, Any]], fmt: str = "markdown", reference: str | None = None,
                       datasets: list[str] | None = None, labels: list[str] | None = None,
                       reported: list[dict[str, Any]] | None = None, metric: str = "rougeL") -> str:
    """The table in ``fmt``. Markdown is a report: both metrics, then per-family exact match, the
    training cost and lm-eval scores where the records have them."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    board = build_board(records, metric, reference, datasets, labels, reported)
    if fmt == "csv":
        return to_csv(board)
    if fmt == "latex":
        return to_latex(board)
    if fmt == "html":
        return to_html(board)
    other = "exact_match" if metric == "rougeL" else "rougeL"
    second = build_board(records, other, reference, datasets, labels, reported)
    parts = [to_markdown(board), to_markdown(dataclasses.replace(second, provenance=[]))]  # the same provenance
    chosen = select_rows(records, labels)
    training = training_frame(chosen)
    if training is not None:
        parts.append("Training cost (wall time on the machine that ran each record, device-seconds = wall time x "
                     "processes; share of steps per source; positions through the teacher, tokens sampled and "
                     "the FLOP estimate 6 N_student per training position + 2 N per position without gradients, "
                     "where the record counted them, validation not counted; the device-seconds include it)\n\n"
                     + md_frame(training) + "\n")
    for name, family_metric in (("ROUGE-L", "rougeL"), ("Exact match", "exact_match")):
        for dataset in board.datasets:
            fam = family_frame(chosen, dataset, family_metric)
            if fam is not None:
                parts.append(f"{name} by task family on {md(dataset)} (mean over seeds)\n\n{md_frame(fam)}\n")
    lm = lm_eval_frame(chosen)
    if lm is not None:
        parts.append("lm-eval\n\n" + md_frame(lm) + "\n")
    if reported:
        averages = {r: float(board.avg[r]) for r in board.means.index if board.kind[r] == "measured"}
        parts.append(agreement_text(rank_agreement(averages, reported, metric)))
    return "\n".join(parts)
