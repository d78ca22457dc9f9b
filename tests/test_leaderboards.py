"""Run records and tables: schema validation, the store and its index, tables (golden files), compare,
history, HTML."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mgsr_bench.errors import UserError
from mgsr_bench.results import ResultsStore, build_board, read_record, render_leaderboard, write_record
from mgsr_bench.results.compare import compare_records, history_frame, render_comparison
from mgsr_bench.results.reported import DATASETS, load_reported, rank_agreement, reported_rows

from test_results import _record

GOLDEN = Path(__file__).with_name("golden")
ROOT = Path(__file__).resolve().parents[1]


#: what the golden files print as provenance: fixed, not this checkout's commit and today's date
_ORIGIN = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "created": "2026-01-02T03:04:05+00:00",
           "machine": {"platform": "Linux", "processor": "x86_64", "cpu_kernels": "AVX2", "device": "cpu"}}


def _trained(device_seconds: float) -> dict:
    return {"seed": 1, "cost": {"device": "cpu", "processes": 1, "device_seconds": device_seconds,
                                "training_tokens": 1000}}


def _fixture():
    """Three measured rows (two with a training cost), a teacher, two datasets; hand-checkable numbers."""
    return [_record("teacher", {"dolly": [30.0, 32.0], "selfinst": [20.0, 20.0]}, **_ORIGIN),
            _record("sft", {"dolly": [24.0, 26.0], "selfinst": [10.0, 12.0]}, training=_trained(100.0), **_ORIGIN),
            _record("kd", {"dolly": [25.0, 25.0], "selfinst": [13.0, 13.0]}, training=_trained(250.0), **_ORIGIN),
            _record("my_method", {"dolly": [26.0, 28.0], "selfinst": [9.0, 11.0]}, method="distillm", **_ORIGIN)]


# --- schema ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit,message", [
    (lambda r: r["scores"]["dolly"]["rougeL"].update(mean="high"), "field 'scores.dolly.rougeL.mean' must be number"),
    (lambda r: r["scores"]["dolly"]["rougeL"].update(std=-1.0), "field 'scores.dolly.rougeL.std' must be >= 0"),
    (lambda r: r.update(config_hash="xyz"), "field 'config_hash' has the wrong format"),
    (lambda r: r.update(surprise=1), "field 'surprise' is not part of the schema"),
    (lambda r: r["evaluation"].pop("seeds"), "field 'evaluation.seeds' is missing"),
    (lambda r: r["scores"]["dolly"]["per_seed"]["10"].pop("exact_match"),
     "field 'scores.dolly.per_seed.10.exact_match' is missing"),
    (lambda r: r.update(label=""), "field 'label' must not be empty"),
])
def test_bad_records_fail_on_write_and_on_read_naming_the_field(tmp_path, edit, message):
    rec = _record("kd", {"dolly": [25.0, 26.0]})
    edit(rec)
    with pytest.raises(UserError, match=re.escape(message)):
        write_record(rec, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()
    (tmp_path / "r.json").write_text(json.dumps(rec))
    with pytest.raises(UserError, match=re.escape(f"bad run record {tmp_path / 'r.json'}: {message}")):
        read_record(tmp_path / "r.json")


def test_the_schema_file_is_standard_json_schema_and_names_every_written_field():
    schema = json.loads((ROOT / "mgsr_bench" / "results" / "run-record.schema.json").read_text())
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(_record("kd", {"dolly": [1.0]})) <= set(schema["properties"])


# --- aggregation ------------------------------------------------------------------------------------

def test_board_aggregates_ranks_measured_rows_only_and_deltas_against_the_reference():
    board = build_board(_fixture(), reference="sft")
    assert list(board.means.index) == ["teacher", "sft", "kd", "my_method"]
    assert board.means.at["my_method", "dolly"] == 27.0 and board.stds.at["my_method", "dolly"] == pytest.approx(2 ** .5)
    assert board.avg.to_dict() == {"teacher": 25.5, "sft": 18.0, "kd": 19.0, "my_method": 18.5}
    assert board.delta.to_dict() == {"teacher": 7.5, "sft": 0.0, "kd": 1.0, "my_method": 0.5}
    assert board.best() == {"dolly": 27.0, "selfinst": 13.0, "avg": 19.0}  # teacher excluded
    only = build_board(_fixture(), labels=["kd", "distillm"])  # a label, and a method name
    assert list(only.means.index) == ["kd", "my_method"]
    with pytest.raises(UserError, match="--reference 'nobody' is not a row"):
        build_board(_fixture(), reference="nobody")
    with pytest.raises(UserError, match="no scores for dataset"):
        build_board(_fixture(), datasets=["vicuna"])


def test_the_cost_column_is_the_mean_device_seconds_and_the_tables_carry_their_provenance():
    runs = [_record("kd@seed1", {"dolly": [25.0]}, group="kd", training=_trained(200.0), **_ORIGIN),
            _record("kd@seed2", {"dolly": [27.0]}, group="kd", training={**_trained(300.0), "seed": 2},
                    **{**_ORIGIN, "created": "2026-01-05T00:00:00+00:00", "git_commit": "fedcba98" * 5}),
            _record("teacher", {"dolly": [30.0]}, **_ORIGIN)]
    for r in runs:
        r["pair"] = {"name": "tiny-x", "teacher_weights": "t0t0", "student_weights": "s1s1"}
    board = build_board(runs)
    assert board.costs == {"kd": 250.0} and math.isnan(board.cost("teacher"))
    assert board.provenance == ["suite or pair: tiny-x (teacher t0t0, student s1s1)",
                                "training seeds: 1, 2; sampling seeds: 10, 20",
                                "commits: 01234567, fedcba98; dates: 2026-01-02 to 2026-01-05; machines: cpu (x86_64, AVX2)"]
    text = render_leaderboard(runs)
    assert "| kd | n=2: 1, 2 | **26.00 ± 1.41** | **26.00 ± 1.41** | 250 |" in text
    assert "Provenance: suite or pair: tiny-x (teacher t0t0, student s1s1) · training seeds: 1, 2" in text
    page = render_leaderboard(runs, "html")
    assert '<span class="provenance">commits: 01234567, fedcba98; dates: 2026-01-02 to 2026-01-05' in page
    assert '<td data-value="250.0">250</td>' in page


def test_the_frontier_keeps_the_rows_no_cheaper_row_beats(tmp_path):
    from mgsr_bench.results.plots import cost_chart, frontier

    points = {"a": (10.0, 40.0), "b": (20.0, 39.0), "c": (20.0, 42.0), "d": (50.0, 41.0), "e": (80.0, 45.0)}
    assert frontier(points) == ["a", "c", "e"]
    assert frontier({"x": (5.0, 1.0), "y": (5.0, 2.0)}) == ["y"]  # at equal cost the better one
    board = build_board(_fixture())
    assert [p.name for p in cost_chart(board, tmp_path / "cost")] == ["cost.png", "cost.svg"]
    no_cost = build_board([_record("kd", {"dolly": [1.0]})])
    assert cost_chart(no_cost, tmp_path / "none") is None and not (tmp_path / "none.png").exists()


def test_reported_rows_are_shown_marked_and_never_ranked():
    rows = [{"method": "Paper KD", "short": "Paper", "citation": "Paper (2024), Table 1; read from x",
             "metric": "rougeL", "scores": {"dolly": 99.0, "selfinst": 99.0}}]
    board = build_board(_fixture(), reported=rows)
    assert board.kind["Paper KD [Paper]"] == "reported"
    assert board.best()["dolly"] == 27.0  # 99 is not a measured value
    md = render_leaderboard(_fixture(), reported=rows)
    assert "| Paper KD [Paper] † | 99.00 | 99.00 | 99.00 |" in md
    assert "† reported by Paper (2024), Table 1; read from x; not measured here and not ranked." in md


def _paper(table: str, averages: dict) -> list:
    """Reported rows of one paper table, each method's five datasets all at its average."""
    return [{"method": m.upper(), "short": "Paper", "citation": f"Paper (2024), {table}; read from x", "metric": "rougeL",
             "registry": m, "scores": dict.fromkeys(DATASETS, v)}
            for m, v in averages.items()]


def test_rank_agreement_is_spearman_over_the_methods_a_paper_table_shares_with_the_board():
    # the fixture's averages: kd 19 > my_method 18.5 > sft 18
    swapped = _paper("Table 1", {"kd": 30.0, "sft": 29.0, "my_method": 28.0})
    same = _paper("Table 2", {"kd": 5.0, "my_method": 4.0, "sft": 3.0, "other": 9.0})  # other: no board row
    partial = _paper("Table 3", {"kd": 1.0, "sft": 2.0}) + [{**_paper("Table 3", {"my_method": 3.0})[0],
                                                            "scores": {"dolly": 3.0}}]  # not all five datasets
    board = build_board(_fixture())
    averages = {r: float(board.avg[r]) for r in ("sft", "kd", "my_method")}
    found = {a.citation.split(",")[1].split(";")[0].strip(): a for a in rank_agreement(averages, swapped + same + partial)}
    assert found["Table 1"].rho == pytest.approx(0.5)  # 1 - 6 * (0 + 1 + 1) / (3 * 8)
    assert found["Table 1"].reported_order == ["kd", "sft", "my_method"]
    assert found["Table 2"].rho == pytest.approx(1.0) and found["Table 2"].methods == ["kd", "my_method", "sft"]
    assert found["Table 3"].methods == ["kd", "sft"] and math.isnan(found["Table 3"].rho)
    text = render_leaderboard(_fixture(), reported=swapped + partial)
    assert ("- rho = +0.50 over 3 methods against Paper (2024), Table 1; read from x: here kd > my_method > sft; "
            "there kd > sft > my_method") in text
    assert "Table 3" not in text.split("Rank agreement")[1]  # two shared methods: no rho
    assert "no reported table shares three methods" in render_leaderboard(_fixture(), reported=partial)


def test_the_curated_reported_file_loads_and_bad_files_are_refused(tmp_path):
    entries = load_reported(ROOT / "leaderboards" / "reported.yaml")
    assert reported_rows(entries, "gpt2-xl->gpt2")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- paper: X\n  source: s\n  pair: {teacher: a, student: b}\n  metric: rougeL\n"
                   "  rows: [{method: m, scores: {doly: 1.0}}]\n")
    with pytest.raises(UserError, match="entry 1: rows\\[0\\].scores has unknown dataset 'doly'"):
        load_reported(bad)


# --- golden files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,name", [("markdown", "board.md"), ("latex", "board.tex"), ("csv", "board.csv")])
def test_rendered_tables_match_the_golden_files(fmt, name):
    rows = [{"method": "KD", "short": "Paper", "citation": "Paper (2024), Table 1; read from x", "metric": "rougeL",
             "scores": {"dolly": 23.5}}]
    text = render_leaderboard(_fixture(), fmt, reference="sft", reported=rows)
    if os.environ.get("MGSR_BENCH_UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text()


# --- the store --------------------------------------------------------------------------------------

def test_store_queries_by_method_pair_dataset_commit_and_date(tmp_path):
    store = ResultsStore(tmp_path)
    a = store.add({**_record("kd", {"dolly": [1.0]}), "git_commit": "aaaa1111", "created": "2026-01-01T00:00:00+00:00"})
    store.add({**_record("kd", {"vicuna": [2.0]}, pair="other"), "git_commit": "bbbb2222",
               "created": "2026-02-01T00:00:00+00:00"})
    store.add({**_record("sft", {"dolly": [3.0]}), "git_commit": "bbbb2222", "created": "2026-03-01T00:00:00+00:00"})
    assert a.parent.relative_to(tmp_path).as_posix() == "tiny/kd"
    assert len(store.paths()) == 3
    assert [p.parent.name for p in store.paths(methods=["kd"])] == ["kd", "kd"]
    assert len(store.paths(pair="other")) == 1 and len(store.paths(dataset="dolly")) == 2
    assert len(store.paths(commit="bbbb")) == 2
    assert len(store.paths(since="2026-01-15", until="2026-02-15")) == 1
    assert len(store.paths(until="2026-02-01")) == 2  # a bare date includes that whole day
    # the index follows the files: a deleted record disappears, an edited one is re-read
    a.unlink()
    assert len(store.paths()) == 2 and (tmp_path / ".mgsr-index.sqlite").exists()


_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_results import _record
from mgsr_bench.results import ResultsStore
store = ResultsStore({root!r})
for i in range(25):
    store.add(_record("w" + sys.argv[1], {{"dolly": [float(i)]}}))
    if i % 5 == 0:
        store.paths()  # rebuild the index while the other process writes
"""


@pytest.mark.slow
def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    script = _WRITER.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    paths = ResultsStore(tmp_path).paths()
    assert len(paths) == 50
    assert sorted(p.parent.name for p in paths) == ["w0"] * 25 + ["w1"] * 25
    assert not list(tmp_path.rglob("*.tmp"))


# --- compare and history ------------------------------------------------------------------------------

def test_compare_flags_drops_beyond_the_noise_both_ways():
    base = [_record("kd", {"dolly": [25.0, 25.0], "vicuna": [10.0, 14.0]}), _record("gone", {"dolly": [1.0]})]
    new = [_record("kd", {"dolly": [23.0, 23.0], "vicuna": [9.0, 11.0]}), _record("fresh", {"dolly": [1.0]})]
    frame = compare_records(new, base, tolerance=0.5, k=2.0).set_index(["label", "dataset"])
    assert frame.at[("kd", "dolly"), "status"] == "regression"  # -2 vs max(0.5, 0): beyond
    # vicuna: -2 with seed stds 2.83 and 1.41 over 2 seeds each -> se sqrt(8/2 + 2/2) = 2.24, threshold 4.47
    assert frame.at[("kd", "vicuna"), "threshold"] == pytest.approx(2 * (8 / 2 + 2 / 2) ** .5)
    assert frame.at[("kd", "vicuna"), "status"] == "within noise"
    assert frame.at[("gone", "dolly"), "status"] == "missing" and frame.at[("fresh", "dolly"), "status"] == "new"
    swapped = compare_records(base, new).set_index(["label", "dataset"])
    assert swapped.at[("kd", "dolly"), "status"] == "improvement"
    greedy = [{**r, "evaluation": {**r["evaluation"], "greedy": True}} for r in new]
    assert set(compare_records(greedy, base)["status"]) >= {"settings differ"}  # never compared


def test_compare_never_compares_records_of_another_pair_or_other_weights():
    """Another pair name, or another digest of the teacher's (or the SFT init's) weights on both
    sides: "pair differs", never compared; a digest on one side only: compared, and the report says
    what it could not check."""
    def rec(label, value, **pair):
        return {**_record(label, {"test": [value, value]}), "pair": {"name": "tiny-abc", **pair}}

    same = {"teacher_weights": "t1", "student_weights": "s1"}
    base = [rec("kd", 25.0, **same), rec("sft", 25.0, **same), rec("seqkd", 25.0, **same), rec("gkd", 25.0)]
    new = [rec("kd", 20.0, **same), rec("sft", 20.0, teacher_weights="t2", student_weights="s1"),
           {**rec("seqkd", 20.0), "pair": {"name": "tiny-xyz", **same}}, rec("gkd", 20.0, **same)]
    frame = compare_records(new, base).set_index(["label", "dataset"])
    assert frame.at[("kd", "test"), "status"] == "regression"  # the same models: compared
    assert frame.at[("sft", "test"), "status"] == "pair differs"  # another teacher build
    assert frame.at[("seqkd", "test"), "status"] == "pair differs"  # another suite
    assert frame.at[("gkd", "test"), "status"] == "regression"  # digests on one side only: compared,
    report = render_comparison(compare_records(new, base), "rougeL")
    assert "2 regression(s)" in report and "2 of another pair" in report
    assert "not checked: whether gkd used the same teacher and student init weights" in report  # and said
    assert "not checked" not in render_comparison(compare_records(new[:1], base[:1]), "rougeL")


def _scored_on(record, n, digest=None):
    scores = {d: {**s, "n": n, **({"data_sha256": digest} if digest else {})} for d, s in record["scores"].items()}
    return {**record, "scores": scores}


def test_rows_scored_on_other_examples_are_neither_compared_nor_ranked_together():
    """Another count or another digest of a dataset's examples (another filter, another file): "data
    differs" in compare, refused by the leaderboard; a digest on one side only is compared and said."""
    base = [_scored_on(_record("kd", {"sni": [25.0, 25.0]}), 1694, "a" * 16),
            _scored_on(_record("sft", {"sni": [25.0, 25.0]}), 1694, "a" * 16),
            _scored_on(_record("gkd", {"sni": [25.0, 25.0]}), 1694, "a" * 16)]
    new = [_scored_on(_record("kd", {"sni": [20.0, 20.0]}), 1650, "b" * 16),
           _scored_on(_record("sft", {"sni": [20.0, 20.0]}), 1694, "c" * 16),
           _scored_on(_record("gkd", {"sni": [20.0, 20.0]}), 1694)]
    frame = compare_records(new, base).set_index(["label", "dataset"])
    assert frame.at[("kd", "sni"), "status"] == "data differs"
    assert frame.at[("sft", "sni"), "status"] == "data differs"
    assert frame.at[("gkd", "sni"), "status"] == "regression"
    report = render_comparison(compare_records(new, base), "rougeL")
    assert "2 on other examples" in report and "not checked: whether gkd" in report
    with pytest.raises(UserError, match=r"rows scored sni on different examples: .*kd \(n 1650"):
        build_board(base + new[:1])
    assert sorted(build_board(base + new[2:]).means.index) == ["gkd", "kd", "sft"]  # no digest: not refused


def test_compare_cli_exits_non_zero_on_a_regression_only(tmp_path, cli):
    for folder, value in (("base", 25.0), ("same", 25.2), ("worse", 20.0)):
        write_record(_record("kd", {"dolly": [value, value]}), tmp_path / folder / "kd.json")
    ok = cli("compare", str(tmp_path / "same"), "--against", str(tmp_path / "base"))
    assert ok.returncode == 0 and "0 regression(s)" in ok.stdout
    bad = cli("compare", str(tmp_path / "worse"), "--against", str(tmp_path / "base"), "--output",
              str(tmp_path / "report.md"))
    assert bad.returncode == 1 and "| kd      | dolly     |" in bad.stdout and "regression" in bad.stdout
    assert (tmp_path / "report.md").read_text() == bad.stdout


def test_history_lists_a_metric_across_commits(tmp_path, cli):
    store = ResultsStore(tmp_path)
    for commit, day, value in (("c2", "02", 26.0), ("c1", "01", 25.0)):
        store.add({**_record("kd", {"dolly": [value]}), "git_commit": commit, "created": f"2026-01-{day}T00:00:00+00:00"})
    frame = history_frame(store.records(), dataset="dolly")
    assert frame["commit"].tolist() == ["c1", "c2"] and frame["mean"].tolist() == [25.0, 26.0]
    out = cli("history", str(tmp_path), "--methods", "kd", "--dataset", "dolly")
    assert out.returncode == 0 and out.stdout.index("c1") < out.stdout.index("c2")


# --- the HTML page in a real browser ------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_html_page_opens_in_headless_chromium_and_sorts(tmp_path):
    page = tmp_path / "board.html"
    page.write_text(render_leaderboard(_fixture(), "html", reference="sft"))

    def rows_after(fragment):
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri() + fragment],
                             capture_output=True, text=True, timeout=60).stdout
        assert "<tbody>" in dom, "chromium rendered nothing"
        return re.findall(r'<tr class="\w+"><td data-value="([^"]+)"', dom)

    assert rows_after("") == ["teacher", "sft", "kd", "my_method"]  # as written
    assert rows_after("#sort=1") == ["sft", "kd", "my_method", "teacher"]  # dolly ascending: 25, 25, 27, 31
    assert rows_after("#sort=3-desc") == ["teacher", "kd", "my_method", "sft"]  # avg descending
