import json

import pytest
import torch

from mgsr_bench.errors import UserError
from mgsr_bench.results import build_board, load_records, make_record, read_record, render_leaderboard, write_record


def _scores(values_by_dataset):
    out = {}
    for name, values in values_by_dataset.items():
        per_seed = {str(10 * (i + 1)): {"rougeL": v, "exact_match": v / 2, "family_exact_match": {"arith": v / 4}}
                    for i, v in enumerate(values)}
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
        out[name] = {"n": 10, "per_seed": per_seed, "rougeL": {"mean": mean, "std": std},
                     "exact_match": {"mean": mean / 2, "std": std / 2}}
    return out


def _record(label, values_by_dataset, method=None, pair="tiny", **extra):
    rec = make_record(label=label, method=method or label, config={"recipe": label}, pair={"name": pair},
                      evaluation={"seeds": [10, 20], "greedy": False, "batch_size": 64},
                      scores=_scores(values_by_dataset), wall_time_s=1.5)
    return {**rec, **extra}


def test_record_round_trip(tmp_path):
    rec = _record("kd", {"test": [50.0, 52.0]})
    path = write_record(rec, tmp_path / "kd.json")
    assert read_record(path) == json.loads(json.dumps(rec))
    assert rec["config_hash"] and rec["versions"]["torch"] and "created" in rec
    # the CPU's vector kernels (AVX2, AVX-512) decide a CPU build's floating-point sums
    assert rec["machine"]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability() != ""


def test_bad_records_name_the_field(tmp_path):
    rec = _record("kd", {"test": [50.0]})
    del rec["scores"]["test"]["rougeL"]
    with pytest.raises(UserError, match=r"scores.test.rougeL"):
        write_record(rec, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    path = tmp_path / "y.json"
    rec = _record("kd", {"test": [50.0]})
    rec.pop("pair")
    path.write_text(json.dumps(rec))
    with pytest.raises(UserError, match="field 'pair' is missing"):
        read_record(path)
    path.write_text("{bad json")
    with pytest.raises(UserError, match="invalid JSON"):
        read_record(path)


def test_leaderboard_pivot_hand_computed(tmp_path):
    write_record(_record("kd", {"test": [50.0, 54.0], "shifted": [30.0, 30.0]}), tmp_path / "a" / "kd.json")
    write_record(_record("teacher", {"test": [80.0, 80.0], "shifted": [60.0, 70.0]}), tmp_path / "teacher.json")
    write_record(_record("sft", {"test": [40.0, 40.0], "shifted": [20.0, 22.0]}), tmp_path / "sft.json")
    (tmp_path / "other.json").write_text('{"not": "a record"}')
    records = load_records(tmp_path)
    board = build_board(records, reference="sft")
    assert list(board.means.index) == ["teacher", "sft", "kd"]
    assert board.datasets == ["test", "shifted"]  # the suite's splits first
    assert board.means.at["kd", "test"] == 52.0 and board.stds.at["kd", "test"] == pytest.approx(2.8284, abs=1e-4)
    assert board.avg["kd"] == 41.0  # (52 + 30) / 2
    assert board.delta["kd"] == 41.0 - 30.5  # sft: (40 + 21) / 2
    assert board.stds.at["teacher", "shifted"] == pytest.approx(7.0711, abs=1e-4)
    assert board.best() == {"test": 52.0, "shifted": 30.0, "avg": 41.0}  # the teacher is never ranked
    md = render_leaderboard(records)
    assert "| teacher" in md and "Exact match by task family on test" in md
    assert "ROUGE-L by task family" not in md  # these records carry exact match per family only
    for rec in records:
        for scores in rec["scores"]["test"]["per_seed"].values():
            scores["family_rougeL"] = {"arith": scores["rougeL"], "story": 2 * scores["rougeL"]}
    from mgsr_bench.results.leaderboard import family_frame

    fam = family_frame(records, "test", "rougeL")
    assert fam.at["kd", "story"] == 2 * board.means.at["kd", "test"] and fam.at["kd", "arith"] == 52.0
    assert "ROUGE-L by task family on test" in render_leaderboard(records)
    csv = render_leaderboard(records, "csv").splitlines()
    assert csv[0] == "method,kind,test_mean,test_std,shifted_mean,shifted_std,avg,train_device_seconds" and csv[1].startswith("teacher,")


def test_leaderboard_errors(tmp_path):
    with pytest.raises(UserError, match="no run records"):
        load_records(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_records(tmp_path / "missing")


def test_training_table_counts_sources_and_scrg():
    from mgsr_bench.results.leaderboard import training_frame

    history = ([{"step": 1, "source": "student", "scrg_corrected": 0.5}, {"step": 2, "source": "replay"}]
               + [{"step": i, "source": "ground_truth"} for i in range(3, 5)])
    trained = make_record(label="mgsr", method="mgsr", config={"recipe": "mgsr"}, pair={"name": "tiny"},
                          evaluation={"seeds": [10]}, scores=_scores({"test": [50.0]}), wall_time_s=9.0,
                          training={"history": history, "seconds_per_step": 1.25, "wall_time_s": 120.0,
                                    "best_step": 4})
    table = training_frame([trained, _record("teacher", {"test": [80.0]})])
    assert list(table.index) == ["mgsr"]  # the teacher record carries no training of this run
    row = table.loc["mgsr"]
    assert (row["steps"], row["s/step"], row["train min"], row["best step"]) == (4, 1.25, 2.0, 4)
    assert (row["student steps"], row["replay steps"], row["scrg corrected"]) == ("25%", "25%", "50%")


def test_weights_digest_names_the_weights_and_a_record_of_other_weights_is_not_kept(tmp_path, tokenizer):
    """The same weights saved twice share a digest, one changed weight changes it; ``finished``
    keeps a record only for the pair (digests included) it was made with."""
    import torch

    from conftest import tiny_model
    from mgsr_bench.eval.generate import EvalSettings
    from mgsr_bench.models import weights_digest
    from mgsr_bench.pipeline import finished

    model = tiny_model(len(tokenizer))
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-6
    model.save_pretrained(tmp_path / "c")
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b") != weights_digest(tmp_path / "c")
    with pytest.raises(UserError, match="holds no \\*.safetensors weights"):
        weights_digest(tmp_path)

    settings = EvalSettings()
    pair = {"name": "tiny-x", "teacher_weights": weights_digest(tmp_path / "a"), "student_weights": "s"}
    config = {"suite": "tiny-x"}
    rec = make_record(label="kd", method="kd", config={**config, "evaluation": settings.as_dict()}, pair=pair,
                      evaluation=settings.as_dict(), scores=_scores({"test": [1.0]}), wall_time_s=1.0)
    path = write_record(rec, tmp_path / "kd.json")
    assert finished(path, config, settings, pair=pair)
    assert not finished(path, config, settings, pair={**pair, "teacher_weights": weights_digest(tmp_path / "c")})
