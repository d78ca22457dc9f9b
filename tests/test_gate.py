"""What the tools refuse and how: ``compare`` as a CI gate (its exit statuses and summary line), the
record schema over every field the tables, comparisons, histories and figures read, ``leaderboard
--write`` leaving the previous set whole on a failure, and labels escaped in markdown."""

import copy
import json
import re
import tempfile
from pathlib import Path

import pytest

from mgsr_bench.errors import UserError
from mgsr_bench.results import load_records, read_record, render_leaderboard, write_record
from mgsr_bench.results.compare import compare_records, history_frame, render_comparison
from mgsr_bench.results.leaderboard import training_frame

from test_results import _record

HISTORY = [{"step": 1, "loss": 2.0, "lr": 1e-3, "grad_norm": 1.0, "source": "student", "tokens": 10,
            "val_rougeL": 20.0},
           {"step": 2, "loss": 1.5, "lr": 1e-3, "grad_norm": 0.5, "source": "ground_truth", "tokens": 12,
            "scrg_corrected": 0.5, "val_loss": 1.2}]


def _trained(label, values, **extra):
    """A record of a trained run: scores, per-seed families, a training history."""
    rec = _record(label, values, **extra)
    rec["training"] = {"seed": 1, "history": copy.deepcopy(HISTORY), "seconds_per_step": 0.5, "wall_time_s": 60.0,
                       "best_step": 2, "best_val": 20.0, "steps_run": 2, "stopped_early": False, "val_examples": 4}
    rec["config"] = {"recipe": label, "train": {"seed": 1}}
    return rec


def _write(folder, rec, name=None, text=None):
    path = Path(folder) / (name or f"{rec['label']}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else json.dumps(rec), encoding="utf-8")  # NaN written as NaN
    return path


# --- compare: the gate's exit statuses ------------------------------------------------------------------

def _stores(tmp_path, new_edit=None, new_labels=("kd", "sft"), base_labels=("kd", "sft")):
    for label in base_labels:
        _write(tmp_path / "base", _record(label, {"dolly": [25.0, 25.0]}))
    for label in new_labels:
        rec = _record(label, {"dolly": [25.1, 25.1]})
        if new_edit:
            new_edit(rec)
        _write(tmp_path / "new", rec)
    return str(tmp_path / "new"), str(tmp_path / "base")


def _nan_mean(rec):
    rec["scores"]["dolly"]["rougeL"]["mean"] = float("nan")


def _inf_std(rec):
    rec["scores"]["dolly"]["rougeL"]["std"] = float("inf")


@pytest.mark.parametrize("edit,field,shown", [
    (_nan_mean, "scores.dolly.rougeL.mean", "NaN"),
    (_inf_std, "scores.dolly.rougeL.std", "Infinity"),
])
def test_compare_refuses_records_with_numbers_that_are_not_finite(tmp_path, cli, edit, field, shown):
    """A NaN mean or an infinite std is an invalid record: exit 2 and one line naming file and field,
    never a row "within noise" with exit 0."""
    new, base = _stores(tmp_path, edit)
    proc = cli("compare", new, "--against", base)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"kd.json: field '{field}' must be a finite number, got {shown}" in proc.stderr


@pytest.mark.parametrize("text", [
    '{\n  "config": {\n    "recipe": "sft"\n  },\n  "config_hash": "0123',  # cut short before its "schema" key
    "",  # cut short before its first byte
    '{"schema_version": 1, "label": "sft"}',  # its "schema" key lost
    "[" * 100_000,  # nested past Python's recursion limit
])
def test_compare_refuses_a_record_it_cannot_read_instead_of_leaving_it_out(tmp_path, cli, text):
    new, base = _stores(tmp_path)
    _write(new, None, "sft.json", text)
    proc = cli("compare", new, "--against", base)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"bad run record {Path(new) / 'sft.json'}: " in proc.stderr


def test_hidden_files_and_folders_of_a_store_are_not_read(tmp_path):
    """A model copy under its temporary name (a kill before its rename) holds JSON cut short: not a
    record, never read; the same file outside a hidden folder is refused."""
    _write(tmp_path, _record("kd", {"dolly": [25.0]}))
    _write(tmp_path / "models" / ".model.tmp-123", None, "tokenizer.json", '{"model": {"vocab": ')
    assert [r["label"] for r in load_records(tmp_path)] == ["kd"]
    _write(tmp_path / "models" / "kd", None, "tokenizer.json", '{"model": {"vocab": ')
    with pytest.raises(UserError, match=r"bad run record .*models/kd/tokenizer.json: invalid JSON at line 1"):
        load_records(tmp_path)


def test_compare_fails_when_rows_are_missing_unless_allowed(tmp_path, cli):
    new, base = _stores(tmp_path, new_labels=("kd",))
    proc = cli("compare", new, "--against", base)
    assert proc.returncode == 4, proc.stdout
    assert proc.stdout.splitlines()[-1] == ("gate: fail (exit 4): 1 row(s) of the baseline missing from the new "
                                            "records: sft/dolly (--allow-missing accepts them)")
    proc = cli("compare", new, "--against", base, "--allow-missing")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[-1] == "gate: pass (1 row(s) compared, 1 missing, accepted by --allow-missing)"


def test_compare_fails_when_nothing_was_compared(tmp_path, cli):
    def other_pair(rec):
        rec["pair"] = {"name": "another-suite"}

    new, base = _stores(tmp_path, other_pair)
    proc = cli("compare", new, "--against", base)
    assert proc.returncode == 4
    assert proc.stdout.splitlines()[-1] == "gate: fail (exit 4): nothing compared (2 of another pair)"
    (tmp_path / "n2").mkdir()
    (tmp_path / "b2").mkdir()
    _write(tmp_path / "n2", {**_record("kd", {}), "scores": {}})
    _write(tmp_path / "b2", {**_record("kd", {}), "scores": {}})
    proc = cli("compare", str(tmp_path / "n2"), "--against", str(tmp_path / "b2"))
    assert proc.returncode == 4 and proc.stdout.splitlines()[-1] == "gate: fail (exit 4): nothing compared (no rows)"
    new_only, _ = _stores(tmp_path / "fresh", new_labels=("gkd",), base_labels=("kd",))
    proc = cli("compare", new_only, "--against", str(tmp_path / "fresh" / "base"), "--allow-missing")
    assert proc.returncode == 4 and "nothing compared (1 new, 1 missing)" in proc.stdout


def test_a_regression_exits_1_even_with_rows_missing_and_the_line_says_both(tmp_path, cli):
    def worse(rec):
        rec["scores"]["dolly"]["rougeL"]["mean"] = 20.0

    new, base = _stores(tmp_path, worse, new_labels=("kd",))
    proc = cli("compare", new, "--against", base)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1].startswith("gate: fail (exit 1): 1 regression(s): kd/dolly; 1 row(s) of the "
                                                   "baseline missing")


def test_compared_numbers_that_are_not_finite_fail_the_gate():
    """Records in memory are not read through the schema: a NaN there is a row "not finite", exit 4."""
    from mgsr_bench.results.compare import gate

    base, new = [_record("kd", {"dolly": [25.0, 25.0]})], [_record("kd", {"dolly": [25.0, 25.0]})]
    new[0]["scores"]["dolly"]["rougeL"]["mean"] = float("nan")
    frame = compare_records(new, base)
    assert frame["status"].tolist() == ["not finite"]
    assert gate(frame) == (4, "gate: fail (exit 4): 1 row(s) with numbers that are not finite: kd/dolly; "
                              "nothing compared (1 not finite)")
    assert "1 not finite (rougeL)" in render_comparison(frame, "rougeL")


# --- the schema covers every field the tools read ---------------------------------------------------------

def _set(path, value):
    def edit(rec):
        target = rec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _drop(path):
    def edit(rec):
        target = rec
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return edit


@pytest.mark.parametrize("edit,field", [
    (_drop(("training", "history", 0, "step")), "training.history[0].step' is missing"),
    (_drop(("training", "history", 1, "loss")), "training.history[1].loss' is missing"),
    (_set(("training", "history", 0, "step"), "one"), "training.history[0].step' must be integer"),
    (_set(("training", "history", 1), "step 2"), "training.history[1]' must be object"),
    (_set(("training", "history", 0, "source"), 3), "training.history[0].source' must be string"),
    (_set(("training", "history", 1, "scrg_corrected"), [0.5]), "training.history[1].scrg_corrected' must be number"),
    (_set(("training", "history"), {"step": 1}), "training.history' must be array"),
    (_drop(("training", "wall_time_s")), "training.wall_time_s' is missing (a record with 'training.seconds_per_step'"),
    (_set(("training", "seconds_per_step"), "fast"), "training.seconds_per_step' must be number"),
    (_set(("training", "best_step"), 1.5), "training.best_step' must be integer or null"),
    (_set(("scores", "dolly", "per_seed", "10", "family_exact_match"), ["arith"]),
     "scores.dolly.per_seed.10.family_exact_match' must be object"),
    (_set(("scores", "dolly", "per_seed", "10", "family_exact_match", "arith"), "high"),
     "scores.dolly.per_seed.10.family_exact_match.arith' must be number"),
    (_set(("scores", "dolly", "rougeL", "mean"), 1e308), "scores.dolly.rougeL.mean' must be <= 100"),
    (_set(("config", "train", "seed"), [1]), "config.train.seed' must be integer"),
    (_set(("pair", "name"), {"a": 1}), "pair.name' must be string"),
    (_set(("lm_eval",), {"task": {"acc": "high"}}), "lm_eval.task.acc' must be number"),
    (_set(("git_commit",), 7), "git_commit' must be string or null"),
    (_set(("config", "lr"), float("nan")), "config.lr' must be a finite number, got NaN"),
    (_set(("training", "history", 0, "loss"), float("-inf")), "training.history[0].loss' must be a finite number, "
                                                               "got -Infinity"),
    (_set(("machine", "n"), 10 ** 400), "machine.n' must be a finite number, got an integer beyond a float's range"),
])
def test_fuzzed_fields_that_the_tools_read_are_refused_at_load_naming_file_and_field(tmp_path, edit, field):
    """All but the lm_eval and git_commit cases (typed already) passed the schema and
    crashed ``leaderboard`` (KeyError 'step', AttributeError, TypeError) or let non-finite numbers
    through; now each is one line naming the file and the field."""
    rec = _trained("kd", {"dolly": [25.0, 26.0]})
    edit(rec)
    path = _write(tmp_path, rec)
    with pytest.raises(UserError) as e:
        read_record(path)
    assert str(e.value).startswith(f"bad run record {path}: field '") and field in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=re.escape(field)):
        write_record(rec, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_a_full_record_is_valid_and_non_finite_training_numbers_are_recorded_as_null(tmp_path):
    from mgsr_bench.results import make_record

    rec = _trained("kd", {"dolly": [25.0, 26.0]})
    assert read_record(_write(tmp_path, rec))["training"]["history"] == HISTORY
    history = [{**HISTORY[0], "grad_norm": float("inf")}, HISTORY[1]]
    made = make_record(label="kd", method="kd", config={}, pair={"name": "tiny"}, evaluation=rec["evaluation"],
                       scores=rec["scores"], wall_time_s=1.0, training={**rec["training"], "history": history})
    assert made["training"]["history"][0]["grad_norm"] is None
    assert read_record(write_record(made, tmp_path / "made.json"))["training"]["history"][0]["grad_norm"] is None


def test_families_that_differ_between_seeds_and_runs_are_averaged_where_present():
    """Per-seed families of other names (seeds or runs that scored different families) are tabled,
    not a KeyError."""
    from mgsr_bench.results.leaderboard import family_frame

    a, b = _trained("kd", {"test": [50.0, 52.0]}), _trained("kd@seed2", {"test": [50.0]}, group="kd")
    a["scores"]["test"]["per_seed"]["20"]["family_exact_match"] = {"story": 10.0}
    b["training"]["seed"] = 2
    frame = family_frame([a, b], "test")
    assert frame.at["kd", "arith"] == 12.5 and frame.at["kd", "story"] == 10.0  # arith: 12.5 in a (one seed), b
    assert "Exact match by task family on test" in render_leaderboard([a, b])


# --- leaderboard --write --------------------------------------------------------------------------------

def test_leaderboard_write_refuses_a_bad_record_before_writing_anything(tmp_path, cli):
    """A history entry without its step: once the markdown, CSV, LaTeX and HTML were written, the
    training figure ended the command in a KeyError; now the record is refused at load."""
    rec = _trained("kd", {"dolly": [25.0, 26.0]})
    del rec["training"]["history"][0]["step"]
    _write(tmp_path / "store", rec)
    proc = cli("leaderboard", str(tmp_path / "store"), "--write", str(tmp_path / "board"))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "field 'training.history[0].step' is missing" in proc.stderr
    assert not (tmp_path / "board").exists()


def test_leaderboard_write_leaves_the_previous_set_whole_when_rendering_fails(tmp_path, monkeypatch):
    import mgsr_bench.results.publish as publish

    records = [_trained("k$^$d", {"dolly": [25.0, 26.0]}), _record("sft", {"dolly": [24.0, 24.0]})]
    board = tmp_path / "board"
    written = publish.write_leaderboard(records, board)  # a label with '$': drawn as written, no math text
    assert sorted(p.name for p in written) == sorted([f"{s}.{e}" for s in ("ranking", "scores", "training")
                                                      for e in ("png", "svg")]
                                                     + [f"leaderboard.{e}" for e in ("csv", "html", "md", "tex")])
    before = {p.name: p.read_bytes() for p in board.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(publish, "bar_chart", broken)
    changed = [_trained("k$^$d", {"dolly": [30.0, 31.0]}), _record("sft", {"dolly": [20.0, 20.0]})]
    with pytest.raises(RuntimeError):
        publish.write_leaderboard(changed, board)
    assert {p.name: p.read_bytes() for p in board.iterdir()} == before  # no file replaced, no temporary left


# --- markdown ----------------------------------------------------------------------------------------------

def _tables(text):
    """The markdown tables of ``text``: per table, the number of unescaped ``|`` of each line."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(len(re.findall(r"(?<!\\)\|", line)))
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_characters_in_labels_and_datasets_are_escaped():
    """A ``|`` in a label or dataset name stays in its cell, ``*`` and ``_`` stay literal and a line
    break does not end the row."""
    records = [_trained("a|b", {"te|st": [50.0, 52.0]}), _record("*sft*", {"te|st": [40.0, 41.0]}),
               _record("x\ny", {"te|st": [30.0, 30.0]}), _record("_it_", {"te|st": [30.0, 30.0]})]
    text = render_leaderboard(records)
    tables = _tables(text)
    assert len(tables) >= 3 and all(len(set(t)) == 1 for t in tables), tables  # every row as many cells
    assert tables[0][0] == 5  # method | te|st | avg | train device-s
    assert "| a\\|b | **51.00 ± 1.41** |" in text and "| \\*sft\\* |" in text and "| x y |" in text
    assert "| \\_it\\_ |" in text and "te\\|st" in text
    report = render_comparison(compare_records(records, records), "rougeL")
    assert all(len(set(t)) == 1 for t in _tables(report)) and "| a\\|b " in report


# --- fuzzed records through every reader -------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_values = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2, max_value=2 ** 70)
                       | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
                       lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner,
                                                                                    max_size=2), max_leaves=4)
_PATHS = [("label",), ("group",), ("method",), ("created",), ("git_commit",), ("pair",), ("pair", "name"),
          ("pair", "teacher_weights"), ("evaluation",), ("evaluation", "seeds"), ("config", "train"),
          ("config", "train", "seed"), ("scores",), ("scores", "dolly"), ("scores", "dolly", "n"),
          ("scores", "dolly", "data_sha256"), ("scores", "dolly", "per_seed"), ("scores", "dolly", "per_seed", "10"),
          ("scores", "dolly", "per_seed", "10", "family_exact_match"),
          ("scores", "dolly", "per_seed", "20", "family_rougeL"),
          ("scores", "dolly", "per_seed", "10", "family_exact_match", "arith"),
          ("scores", "dolly", "rougeL"), ("scores", "dolly", "rougeL", "mean"), ("scores", "dolly", "rougeL", "std"),
          ("scores", "dolly", "exact_match", "mean"), ("lm_eval",), ("training",), ("training", "seed"),
          ("training", "history"), ("training", "history", 0), ("training", "history", 0, "step"),
          ("training", "history", 1, "loss"), ("training", "history", 0, "source"),
          ("training", "history", 1, "scrg_corrected"), ("training", "history", 0, "val_rougeL"),
          ("training", "seconds_per_step"), ("training", "wall_time_s"), ("training", "best_step")]


def _mutate(rec, path, value):
    """Set ``path`` to ``value`` (or delete it, for None as a path's value 'drop')."""
    target = rec
    for key in path[:-1]:
        try:
            target = target[key]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(target, dict) or (isinstance(target, list) and isinstance(path[-1], int)
                                    and path[-1] < len(target)):
        if value == "<drop>" and isinstance(target, dict):
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(_PATHS), st.just("<drop>") | _values), min_size=1, max_size=3),
       side=st.booleans())
def test_fuzzed_records_are_refused_in_one_line_or_handled_by_every_tool(edits, side):
    """Every generated record is refused at load in one ``UserError`` line naming its file, or goes
    through the leaderboard (every format), compare (and its gate), history and the training table
    without an exception."""
    from mgsr_bench.results.compare import gate

    fmt_checks = ("markdown", "csv", "latex", "html")
    with tempfile.TemporaryDirectory() as tmp:
        new, base = Path(tmp) / "new", Path(tmp) / "base"
        fuzzed = _trained("kd", {"dolly": [25.0, 26.0]})
        for path, value in edits:
            _mutate(fuzzed, path, value)
        try:
            text = json.dumps(fuzzed)
        except (TypeError, ValueError):  # not JSON at all (a key that is no string cannot be written)
            return
        (new if side else base).mkdir(parents=True)
        (new if side else base).joinpath("kd.json").write_text(text, encoding="utf-8")
        _write(new, _trained("sft", {"dolly": [24.0, 24.5]}))
        _write(base, _trained("sft", {"dolly": [24.0, 24.5]}))
        _write(base if side else new, _trained("kd", {"dolly": [25.0, 25.5]}))
        try:
            records_new, records_base = load_records(new), load_records(base)
        except UserError as e:
            assert "\n" not in str(e) and "kd.json" in str(e), str(e)
            return
        for records in (records_new, records_base):
            for fmt in fmt_checks:
                render_leaderboard(records, fmt)
            training_frame(records)
            history_frame(records)
        frame = compare_records(records_new, records_base)
        render_comparison(frame, "rougeL")
        code, line = gate(frame)
        assert code in (0, 1, 4) and "\n" not in line
