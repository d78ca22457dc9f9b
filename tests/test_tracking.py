"""Experiment trackers through accelerate: what a run logs is read back from TensorBoard's event files."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _scalars(folder):
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    tags: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            tags.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return tags


def test_an_mgsr_run_logs_its_loss_terms_and_scrg_to_tensorboard(hub_style_pair, cli):
    """MGSR with SCRG on every step (student samples, lambda = 1): the three loss terms, SCRG's
    correction fraction, validation, tokens per second and peak memory, one point per step."""
    import json

    p = hub_style_pair
    (p / "mgsr.yaml").write_text("method: mgsr\noptions: {init_threshold: 1.0, capacity: 1000000000}\n"
                                 "train: {micro_batch: 4, eval_every: 2, val_metric: loss, gen_max_new_tokens: 8}\n")
    proc = cli("train", str(p / "mgsr.yaml"), "--teacher", str(p / "teacher"), "--student", str(p / "student"),
               "--train-data", str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--steps", "3",
               "--report-to", "tensorboard", "--out", str(p / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    tags = _scalars(p / "run" / "logs")
    for tag in ("loss", "mgsr_dac", "mgsr_span", "mgsr_kept", "scrg_corrected", "tokens_per_s", "peak_memory_gib"):
        assert tag in tags, sorted(tags)
    assert [step for step, _ in sorted(tags["loss"])] == [1, 2, 3]
    assert [step for step, _ in sorted(tags["val_loss"])] == [2, 3]  # every eval_every steps, and the last
    history = json.loads((p / "run" / "training.json").read_text())["training"]["history"]
    assert sorted(tags["mgsr_dac"])[0][1] == pytest.approx(history[0]["mgsr_dac"], rel=1e-6)


def test_an_unknown_or_missing_tracker_is_refused_before_any_work(hub_style_pair, cli):
    p = hub_style_pair
    args = ["train", "kd", "--teacher", str(p / "teacher"), "--student", str(p / "student"), "--train-data",
            str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--out", str(p / "run")]
    proc = cli(*args, "--report-to", "tensorbord")
    assert proc.returncode == 2 and "unknown tracker 'tensorbord'" in proc.stderr and not (p / "run").exists()
