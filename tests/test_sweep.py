"""Comparison grids: checked whole before any job, resumable, with each cell's status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_cli import _cli

GRID = """out: {out}
recipes: [sft, kd]
suites: [tiny-quick]
train_seeds: [1, 2]
overrides: [{{steps: 2}}]
seeds: "10"
executor: {executor}
"""


@pytest.mark.parametrize("edit, says", [
    ("recipes: [kdd]", "unknown recipe 'kdd' (did you mean 'kd'?)"),
    ("pairs: {nosuch: {train: a, valid: b, eval: {d: c}}}", "unknown pair 'nosuch'"),
    ("overrides: [{tempurature: 2}]", "override 0: 'tempurature' is neither a training setting nor an option"),
    ("overrides: [{temperature: -1}]", "override 0 of recipe 'kd'"),
    ("train_seeds: []", "train_seeds must be a non-empty list"),
    ("recipes: []", "recipes must be a non-empty list"),
    ("executor: pbs", "unknown executor 'pbs'"),
    ("bogus: 1", "unknown key 'bogus'"),
])
def test_a_bad_grid_ends_in_one_line_before_any_job(tmp_path, cli, edit, says):
    key = edit.split(":")[0]
    text = "".join(line + "\n" for line in GRID.format(out=tmp_path / "out", executor="local").splitlines()
                   if not line.startswith(key + ":")) + edit + "\n"
    (tmp_path / "grid.yaml").write_text(text)
    proc = cli("sweep", str(tmp_path / "grid.yaml"))
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_grid_killed_part_way_and_submitted_again_ends_with_each_record_once(tmp_path):
    """2 recipes x 2 training seeds on the quick suite. The local executor is killed while its first
    cell trains; --status then calls that cell failed (killed); the grid submitted again through
    submitit's local executor ends with exactly 4 records, none twice, and every cell done."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "out"
    (tmp_path / "local.yaml").write_text(GRID.format(out=out, executor="local"))
    (tmp_path / "submitit.yaml").write_text(GRID.format(out=out, executor="submitit-local"))
    sweep = subprocess.Popen([sys.executable, "-m", "mgsr_bench", "sweep", str(tmp_path / "local.yaml")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not list((out / "tiny-quick" / "logs").glob("*.running")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(5)  # the cell's `run` is under way
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    proc = _cli("sweep", str(tmp_path / "local.yaml"), "--status")
    assert proc.returncode == 0 and "failed" in proc.stdout and "killed while running" in proc.stdout, proc.stdout
    proc = _cli("sweep", str(tmp_path / "submitit.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    records = sorted(p.name for p in (out / "tiny-quick" / "records").glob("*.json") if p.name != "teacher.json")
    assert records == ["kd+o0.json", "kd+o0@seed2.json", "sft+o0.json", "sft+o0@seed2.json"]
    assert json.loads((out / "jobs.json").read_text())
    proc = _cli("sweep", str(tmp_path / "local.yaml"), "--status")
    assert proc.stdout.strip().endswith("sweep: 4 done of 4 cells"), proc.stdout


@pytest.mark.slow
def test_a_pair_cell_trains_then_evaluates_and_a_second_submission_skips_it(hub_style_pair, tmp_path, monkeypatch):
    """On a registered pair a cell is `train` then `eval`; the record's pair is the pair, and the
    grid submitted again runs nothing."""
    p = hub_style_pair
    (p / "pairs.yaml").write_text(f"mine:\n  teacher: {p / 'teacher'}\n  student: {p / 'student'}\n"
                                  "  dtype: float32\n  accelerate: cpu\n  micro_batch: 4\n")
    env = {"MGSR_BENCH_PAIRS": str(p / "pairs.yaml")}
    (tmp_path / "grid.yaml").write_text(
        f"out: {tmp_path / 'out'}\nrecipes: [kd]\ntrain_seeds: [3]\noverrides: [{{steps: 2}}]\nseeds: '10'\n"
        f"pairs:\n  mine: {{train: {p / 'train.jsonl'}, valid: {p / 'valid.jsonl'}, eval: {{t: {p / 'test.jsonl'}}}}}\n")
    proc = _cli("sweep", str(tmp_path / "grid.yaml"), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "mine" / "records" / "kd+o0@seed3.json").read_text())
    assert record["pair"]["name"] == "mine" and set(record["scores"]) == {"t"}
    assert (tmp_path / "out" / "mine" / "models" / "kd+o0@seed3" / "training.json").is_file()
    proc = _cli("sweep", str(tmp_path / "grid.yaml"), env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("sweep: 1 done of 1 cells"), proc.stdout
    assert "$ " not in (tmp_path / "out" / "mine" / "logs" / "kd+o0@seed3.log").read_text().split("exit 0")[-1]
