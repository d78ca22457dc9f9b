"""Several training seeds per method: labels and record fields, the schema, the aggregation in the
tables (checked against hand-computed values), compare's noise, the ranking figure, and the
command line's --train-seeds."""

import json
import re

import pytest

from mgsr_bench.errors import UserError
from mgsr_bench.pipeline import SeededRun, seeded_runs
from mgsr_bench.results import build_board, read_record, render_leaderboard, write_record
from mgsr_bench.results.compare import compare_records, render_comparison
from mgsr_bench.results.record import record_group, record_seed, seeded_label

from test_results import _record

# kd at training seeds 1, 2, 3; two sampling seeds each. Per run: test 51, 54, 46 and shifted 30, 32, 28,
# so averages 40.5, 43, 37.
KD_RUNS = {1: {"test": [50.0, 52.0], "shifted": [30.0, 30.0]},
           2: {"test": [54.0, 54.0], "shifted": [31.0, 33.0]},
           3: {"test": [45.0, 47.0], "shifted": [28.0, 28.0]}}


def _seeded(group, seed, values, created="2026-01-02T00:00:00+00:00", label=None):
    rec = _record(label or seeded_label(group, seed), values, method=group, created=created)
    return {**rec, "group": group, "training": {"seed": seed}}


def _records(shift=0.0, created="2026-01-02T00:00:00+00:00"):
    kd = [_seeded("kd", s, {d: [v + shift for v in vs] for d, vs in runs.items()}, created)
          for s, runs in KD_RUNS.items()]
    return [_record("teacher", {"test": [80.0, 80.0], "shifted": [60.0, 60.0]}),
            _record("sft", {"test": [40.0, 42.0], "shifted": [20.0, 20.0]}), *kd]


# --- labels and fields ---------------------------------------------------------------------------------

def test_seeded_runs_keep_the_plain_label_for_the_default_seed_alone():
    assert seeded_runs("kd", 1, None) == [SeededRun("kd", "kd", None)]
    assert seeded_runs("kd", 1, (1,)) == [SeededRun("kd", "kd", 1)]  # the same run, the same record
    assert seeded_runs("kd", 1, (7,)) == [SeededRun("kd@seed7", "kd", 7)]
    assert [(r.label, r.group, r.seed) for r in seeded_runs("kd", 1, (1, 2, 3))] == [
        ("kd@seed1", "kd", 1), ("kd@seed2", "kd", 2), ("kd@seed3", "kd", 3)]
    assert SeededRun("kd@seed2", "kd", 2).overrides({"steps": 5}) == {"steps": 5, "seed": 2}
    assert SeededRun("kd", "kd", None).overrides({"steps": 5}) == {"steps": 5}


def test_records_carry_their_group_and_training_seed():
    rec = _seeded("kd", 2, {"test": [1.0]})
    assert (record_group(rec), record_seed(rec)) == ("kd", 2)
    plain = _record("kd", {"test": [1.0]})
    assert plain["group"] == "kd" and record_seed(plain) is None  # make_record: the label is the group
    older = {k: v for k, v in plain.items() if k != "group"}  # records written without group or training.seed
    older["config"] = {"train": {"seed": 5}}
    assert (record_group(older), record_seed(older)) == ("kd", 5)


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.update(training={"seed": -1}), "field 'training.seed' must be >= 0, got -1"),
    (lambda r: r.update(training={"seed": 2 ** 64}), "field 'training.seed' must be <= 18446744073709551615"),
    (lambda r: r.update(training={"seed": "1"}), "field 'training.seed' must be integer, got str"),
    (lambda r: r.update(training={"seed": 1.5}), "field 'training.seed' must be integer, got float"),
    (lambda r: r.update(group=""), "field 'group' must not be empty"),
    (lambda r: r.update(group=3), "field 'group' must be string, got int"),
])
def test_the_schema_validates_the_seed_and_the_group(tmp_path, edit, message):
    good = _seeded("kd", 2 ** 64 - 1, {"test": [1.0]})
    assert read_record(write_record(good, tmp_path / "good.json"))["training"]["seed"] == 2 ** 64 - 1
    bad = _seeded("kd", 2, {"test": [1.0]})
    edit(bad)
    with pytest.raises(UserError, match=re.escape(message)):
        write_record(bad, tmp_path / "bad.json")


# --- the tables ----------------------------------------------------------------------------------------

def test_a_row_of_several_seeds_is_the_mean_of_the_runs_means_with_their_std():
    older = _seeded("kd", 1, {"test": [10.0, 10.0], "shifted": [10.0, 10.0]}, "2026-01-01T00:00:00+00:00",
                    label="kd")  # seed 1's plain-label run, older than kd@seed1: replaced by it
    board = build_board([older, *_records()], reference="sft")
    assert list(board.means.index) == ["teacher", "sft", "kd"]
    assert board.seeds["kd"] == (1, 2, 3) and board.runs("kd") == 3 and board.several_seeds
    # test: (51 + 54 + 46) / 3; deviations 2/3, 11/3, -13/3 -> variance (4 + 121 + 169) / 9 / 2 = 16.333
    assert board.means.at["kd", "test"] == pytest.approx(151 / 3)
    assert board.stds.at["kd", "test"] == pytest.approx(16.3333 ** 0.5, abs=1e-4)
    assert board.means.at["kd", "shifted"] == pytest.approx(30.0) and board.stds.at["kd", "shifted"] == 2.0
    # the averages 40.5, 43, 37: mean 40.1667, deviations 1/3, 17/6, -19/6 -> variance 9.0833
    assert board.avg["kd"] == pytest.approx(40.1667, abs=1e-4)
    assert board.avg_stds["kd"] == pytest.approx(9.0833 ** 0.5, abs=1e-4)
    # a single run: its own mean ± sampling std, as without seeds
    assert board.means.at["sft", "test"] == 41.0 and board.stds.at["sft", "test"] == pytest.approx(2 ** 0.5)
    assert board.delta["kd"] == pytest.approx(40.1667 - 30.5, abs=1e-4)
    assert list(build_board(_records(), labels=["kd"]).means.index) == ["kd"]  # a group selects its runs


def test_every_format_names_the_seeds_and_the_spread():
    records = _records()
    md = render_leaderboard(records, reference="sft")
    assert "| method | training seeds | test | shifted | avg | Δ vs sft |" in md
    assert "| kd | n=3: 1, 2, 3 | **50.33 ± 4.04** | **30.00 ± 2.00** | **40.17 ± 3.01** | +9.67 |" in md
    assert "| sft | – | 41.00 ± 1.41 | 20.00 ± 0.00 | 30.50 | +0.00 |" in md  # one run, no seed recorded
    assert "± the sample std over training seeds" in md
    csv = render_leaderboard(records, "csv").splitlines()
    assert csv[0] == ("method,kind,training_seeds,n_training_seeds,test_mean,test_std,shifted_mean,shifted_std,"
                      "avg,avg_std,train_device_seconds")
    assert csv[3] == "kd,measured,1 2 3,3,50.3333,4.0415,30.0,2.0,40.1667,3.0139,"  # no training cost recorded
    tex = render_leaderboard(records, "latex")
    assert "Method & $n$ & test & shifted & Avg. & Train (device-s) \\\\" in tex and "kd & 3 & \\textbf{50.33 $\\pm$ 4.04}" in tex
    page = render_leaderboard(records, "html")
    assert "<th>training seeds</th>" in page and '<td data-value="3">n=3: 1, 2, 3</td>' in page


def test_family_exact_match_is_averaged_over_the_runs():
    from mgsr_bench.results.leaderboard import family_frame

    # _record's family score is value / 4: per run (51, 54, 46) / 4, mean 12.58
    assert family_frame(_records(), "test").at["kd", "arith"] == pytest.approx(151 / 12, abs=0.05)


# --- compare -------------------------------------------------------------------------------------------

def test_compare_counts_the_spread_over_training_seeds():
    # both sides 3 runs, 5 points apart; S^2 = 16.333 per side, so var = 16.333 / 3 each (the sampling
    # floor, 3 runs x (2 / 2) / 9 = 0.333, is below); se = sqrt(2 x 5.444) = 3.300, threshold 6.600
    frame = compare_records(_records(shift=-5.0), _records()).set_index(["label", "dataset"])
    row = frame.loc[("kd", "test")]
    assert row["delta"] == pytest.approx(-5.0) and row["threshold"] == pytest.approx(2 * (2 * 16.3333 / 3) ** 0.5,
                                                                                      abs=1e-3)
    assert row["status"] == "within noise" and row["noise"] == "training seeds (new 3, base 3)"
    assert row["new_std"] == pytest.approx(16.3333 ** 0.5, abs=1e-4)
    assert frame.loc[("sft", "test"), "noise"] == "sampling"
    # one run against three: that run's variance is taken as the three runs' S^2 (16.333), the three's
    # mean's 16.333 / 3; se = sqrt(21.778) = 4.667, threshold 9.333; 40 - 50.333 is beyond it
    single = [_record("kd", {"test": [40.0, 40.0]})]
    row = compare_records(single, _records()).set_index(["label", "dataset"]).loc[("kd", "test")]
    assert row["threshold"] == pytest.approx(2 * (16.3333 + 16.3333 / 3) ** 0.5, abs=1e-3)
    assert row["status"] == "regression" and row["noise"] == "training seeds (new 1, base 3)"
    # runs that agree exactly: the sampling noise is the floor (3 x (2 / 2) / 9), not zero
    same = [_seeded("kd", s, {"test": [49.0, 51.0]}) for s in (1, 2, 3)]
    row = compare_records(same, [_record("kd", {"test": [50.0, 50.0]})]).iloc[0]
    assert row["threshold"] == pytest.approx(2 * (1 / 3) ** 0.5)
    assert "training seeds (new 3, base 3)" in render_comparison(compare_records(_records(-5.0), _records()), "rougeL")


# --- the figure ----------------------------------------------------------------------------------------

def test_the_ranking_figure_has_one_row_per_method_best_first(tmp_path):
    import matplotlib.collections

    from mgsr_bench.results.plots import ranking_figure
    from mgsr_bench.results.publish import write_leaderboard

    records = [*_records(), *(_record(f"m{i:02d}", {"test": [30.0 + i, 30.0 + i], "shifted": [20.0, 22.0]})
                              for i in range(30))]
    board = build_board(records, reference="sft")
    fig = ranking_figure(board)
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(names) == len(set(names)) == 33
    avg = board.avg
    assert names == sorted(names, key=lambda r: -avg[r]) and names[:3] == ["teacher", "kd", "m29"]
    assert fig.axes[0].get_ylim()[0] > fig.axes[0].get_ylim()[1]  # the first name on top
    # the average's panel: kd's bar spans its mean ± the std over training seeds of its averages
    y = names.index("kd")
    segments = [s for c in fig.axes[-1].collections if isinstance(c, matplotlib.collections.LineCollection)
                for s in c.get_segments() if s[0][1] == y]
    assert [list(s[:, 0]) for s in segments] == [pytest.approx([40.1667 - 3.0139, 40.1667 + 3.0139], abs=1e-3)]
    written = write_leaderboard(records, tmp_path, reference="sft")
    assert {p.name for p in written} >= {"ranking.png", "ranking.svg", "scores.png"}


# --- the command line ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value,says", [
    ("1,x", "--train-seeds takes comma-separated integers such as 1,2,3, got '1,x'"),
    ("1,,2", "--train-seeds takes comma-separated integers"),
    ("-1", "--train-seeds: seed -1 is negative; give seeds from 0 to 18446744073709551615"),
    ("18446744073709551616", "seed 18446744073709551616 does not fit in 64 bits"),
    ("3,2,3", "--train-seeds names seed 3 twice: give each seed once"),
])
@pytest.mark.parametrize("command", ["run", "train"])
def test_bad_train_seeds_end_in_one_line_before_any_work(tmp_path, monkeypatch, cli, command, value, says):
    monkeypatch.setenv("MGSR_BENCH_CACHE", str(tmp_path / "cache"))
    args = ["run", "--methods", "kd"] if command == "run" else ["train", "kd"]
    proc = cli(*args, f"--train-seeds={value}", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_train_with_several_seeds_under_a_launcher_or_without_a_folder_name_is_refused(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("MGSR_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    dot = cli("train", "kd", "--train-seeds", "1,2", "--out", ".")
    assert dot.returncode == 2 and "--out . names no folder" in dot.stderr
    monkeypatch.setenv("WORLD_SIZE", "2")
    launched = cli("train", "kd", "--train-seeds", "1,2", "--out", "run")
    assert launched.returncode == 2 and "give one seed per launch" in launched.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_train_writes_one_folder_per_seed_and_skips_finished_seeds(hub_style_pair, cli):
    p = hub_style_pair
    args = ["train", "kd", "--teacher", str(p / "teacher"), "--student", str(p / "student"), "--train-data",
            str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--steps", "2"]
    proc = cli(*args, "--out", str(p / "run"), "--train-seeds", "1,2")
    assert proc.returncode == 0, proc.stderr
    for seed in (1, 2):
        summary = json.loads((p / f"run@seed{seed}" / "training.json").read_text())
        assert summary["training"]["seed"] == seed == summary["config"]["train"]["seed"]
        assert (p / f"run@seed{seed}" / "model" / "config.json").is_file()
    assert not (p / "run").exists()
    again = cli(*args, "--out", str(p / "run"), "--train-seeds", "1,2,3")  # a killed three-seed run, re-run
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already finished there") == 2
    assert json.loads((p / "run@seed3" / "training.json").read_text())["training"]["seed"] == 3
    other = cli(*args[:-1], "3", "--out", str(p / "run"), "--train-seeds", "1,2")
    assert other.returncode == 2 and "holds a finished run of other settings" in other.stderr
    plain = cli(*args, "--out", str(p / "plain"))
    assert plain.returncode == 0, plain.stderr
    assert json.loads((p / "plain" / "training.json").read_text())["training"]["seed"] == 1
