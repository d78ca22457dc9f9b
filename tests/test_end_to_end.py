"""The main job end to end on the smoke-sized suite: build, train SFT and KD, evaluate, table."""

import csv
import json

import pytest

from mgsr_bench.suite.tasks import FAMILIES

from test_cli import _cli

pytestmark = pytest.mark.slow  # builds a suite, trains and evaluates in subprocesses


def test_run_quick_end_to_end(tmp_path):
    env = {"MGSR_BENCH_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    proc = _cli("run", "--quick", "--out", str(out), "--seeds", "10,20", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building suite tiny-quick" in proc.stdout
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["method"] for r in rows] == ["teacher", "sft", "kd"]
    assert set(rows[0]) == {"method", "kind", "test_mean", "test_std", "shifted_mean", "shifted_std", "avg",
                            "delta_vs_sft", "train_device_seconds"}
    assert rows[0]["train_device_seconds"] == "" and float(rows[2]["train_device_seconds"]) > 0
    for name in ("leaderboard.tex", "leaderboard.html", "scores.svg", "training.png", "cost.png"):
        assert (out / name).is_file()
    cost = json.loads((out / "records" / "kd.json").read_text())["training"]["cost"]
    assert cost["teacher_forward_tokens"] == cost["student_forward_tokens"] > cost["training_tokens"] > 0
    for name in ("teacher", "sft", "kd"):
        rec = json.loads((out / "records" / f"{name}.json").read_text())
        assert set(rec["scores"]) == {"test", "shifted"}
        assert set(rec["scores"]["test"]["per_seed"]) == {"10", "20"}
        for metric in ("family_exact_match", "family_rougeL"):
            assert set(rec["scores"]["test"]["per_seed"]["10"][metric]) == set(FAMILIES)
    assert (out / "models" / "kd" / "model.safetensors").is_file()
    # every record names the models it came from by the digests of the suite's saved weights
    from mgsr_bench.models import weights_digest

    suite = next((tmp_path / "cache").glob("tiny-quick-*"))
    digests = {"teacher_weights": weights_digest(suite / "teacher"),
               "student_weights": weights_digest(suite / "student-init")}
    for name in ("teacher", "sft", "kd"):
        pair = json.loads((out / "records" / f"{name}.json").read_text())["pair"]
        assert {k: pair[k] for k in digests} == digests
    assert "| teacher" in proc.stdout
    assert not list(out.rglob(".*tmp*"))

    # The same command again finds every record of this exact run and redoes nothing.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "records").iterdir()}
    proc = _cli("run", "--quick", "--out", str(out), "--seeds", "10,20", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already there; kept") == 3
    assert {p.name: p.stat().st_mtime_ns for p in (out / "records").iterdir()} == before

    # Two training seeds of one recipe: a record each (METHOD@seedN, its seed in training.seed and the
    # resolved config), one row of the tables and the figure; the same command again redoes nothing.
    seeded = tmp_path / "seeded"
    args = ("run", "--quick", "--out", str(seeded), "--methods", "sft", "--train-seeds", "1,2", "--steps", "3",
            "--seeds", "10")
    proc = _cli(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((seeded / "records" / f"sft@seed{seed}.json").read_text()) for seed in (1, 2)]
    for seed, rec in zip((1, 2), runs):
        assert rec["group"] == "sft" and rec["training"]["seed"] == seed == rec["config"]["train"]["seed"]
    assert runs[0]["training"]["history"][0]["loss"] != runs[1]["training"]["history"][0]["loss"]  # other batches
    rows = list(csv.DictReader((seeded / "leaderboard.csv").open()))
    assert [(r["method"], r["n_training_seeds"]) for r in rows] == [("teacher", ""), ("sft", "2")]
    assert "delta_vs_sft" in rows[0] and (seeded / "ranking.png").is_file()
    proc = _cli(*args, env=env)
    assert proc.returncode == 0 and proc.stdout.count("already there; kept") == 3, proc.stderr[-3000:]

    # A second command reuses the cached suite instead of rebuilding it.
    proc = _cli("train", "sft", "--quick", "--steps", "1", "--out", str(tmp_path / "again"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building suite" not in proc.stdout

    # kd reading a top-16 teacher cache that the run writes once into OUT: row kd+cache, the cache's
    # key in its config (SFT untouched); the same command again keeps every record and the cache.
    cached = tmp_path / "cached"
    args = ("run", "--quick", "--out", str(cached), "--methods", "sft,kd", "--teacher-cache", "16", "--steps", "3",
            "--seeds", "10")
    proc = _cli(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kd = json.loads((cached / "records" / "kd+cache.json").read_text())
    assert kd["config"]["teacher_cache"]["key"]["k"] == 16 and kd["config"]["teacher_cache"]["rest"] == "bucket"
    assert "teacher_cache" not in json.loads((cached / "records" / "sft.json").read_text())["config"]
    manifest = (cached / "teacher-cache-k16" / "manifest.json").stat().st_mtime_ns
    proc = _cli(*args, env=env)
    assert proc.returncode == 0 and proc.stdout.count("already there; kept") == 3, proc.stderr[-3000:]
    assert (cached / "teacher-cache-k16" / "manifest.json").stat().st_mtime_ns == manifest
