"""Reliability: kill-and-resume, non-finite losses, resumable evaluation, fuzzed loaders, safe loading."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mgsr_bench.errors import UserError

from conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _train_args(p, recipe, out):
    return [sys.executable, "-m", "mgsr_bench", "train", recipe, "--teacher", str(p / "teacher"), "--student",
            str(p / "student"), "--train-data", str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"),
            "--steps", "14", "--checkpoint-every", "2", "--out", str(out)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _outcome(out):
    summary = json.loads((out / "training.json").read_text())
    return {"history": summary["training"]["history"], "best": (summary["training"]["best_step"],
                                                                summary["training"]["best_val"]),
            "weights": (out / "model" / "model.safetensors").read_bytes()}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["kd", "distillm"])
def test_a_run_killed_at_a_random_step_resumes_to_the_same_result(hub_style_pair, tmp_path, recipe):
    """SIGKILL once a checkpoint at a random step exists, re-run the same command: the history, the
    best step and the saved weights equal the uninterrupted run's exactly (distillm: student samples,
    replay buffer and adaptive threshold restored too)."""
    whole = subprocess.run(_train_args(hub_style_pair, recipe, tmp_path / "whole"), env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    kill_after = random.Random(recipe).choice([2, 4, 6, 8, 10])
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_args(hub_style_pair, recipe, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoints" / f"step-{kill_after:07d}.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "training.json").exists()
    again = subprocess.run(_train_args(hub_style_pair, recipe, out), env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _outcome(out) == _outcome(tmp_path / "whole")
    assert not (out / "checkpoints").exists()  # spent once the model is saved
    refused = subprocess.run(_train_args(hub_style_pair, recipe, out), env=ENV, capture_output=True, text=True)
    assert refused.returncode == 2 and "holds a finished run" in refused.stderr


SIGTERM_MID_SAVE = """
import os, signal, sys, torch
save = torch.save
def save_then_terminated(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's SIGTERM, arriving while the checkpoint is written
torch.save = save_then_terminated
from mgsr_bench.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_run_terminated_while_it_writes_a_checkpoint_leaves_no_temporary_file(hub_style_pair, tmp_path):
    """SIGTERM (schedulers, ``timeout``, ``docker stop``) while the first checkpoint is being written
    under its temporary name: the run ends as on Ctrl-C, that file removed, nothing else written, and
    the ``--out`` it made, left empty, removed too (Python's default ended the process on the spot,
    leaving ``.step-0000002.pt.tmp-HOST-PID``)."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_MID_SAVE, *_train_args(hub_style_pair, "kd", out)[3:]],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert not out.exists(), sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe_every, flag, expected", [(None, None, 100), (3, None, 3), (3, "5", 5)])
def test_checkpoint_spacing_comes_from_the_flag_then_the_recipe_then_the_default(hub_style_pair, tmp_path, cli,
                                                                                  recipe_every, flag, expected):
    """``train``'s checkpoint spacing: ``--checkpoint-every``, else the recipe's
    ``train.checkpoint_every``, else 100 (the default never overrides the recipe's value)."""
    recipe = tmp_path / "kd-spaced.yaml"
    recipe.write_text("method: kd\n" + (f"train: {{checkpoint_every: {recipe_every}}}\n" if recipe_every else ""))
    p = hub_style_pair
    proc = cli("train", str(recipe), "--teacher", str(p / "teacher"), "--student", str(p / "student"),
               "--train-data", str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--steps", "2",
               "--out", str(tmp_path / "run"), *(["--checkpoint-every", flag] if flag else []))
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "training.json").read_text())["config"]
    assert config["train"]["checkpoint_every"] == expected


@pytest.mark.slow
def test_best_weights_are_written_once_per_best_step_and_pruned_with_the_checkpoints(tmp_path, tokenizer, records):
    """Validated every 2 steps and checkpointed every 2 of 9, two kept: the folder ends with the
    checkpoints of steps 6 and 8 and only the best copies they name, each holding the weights that
    the run's best-so-far had at that step."""
    from mgsr_bench.config import train_config
    from mgsr_bench.data.collate import tokenize_records
    from mgsr_bench.methods import get_method
    from mgsr_bench.train import train

    examples = tokenize_records(records[:64], tokenizer)
    cfg = {"steps": 9, "micro_batch": 8, "lr": 5e-3, "eval_every": 2, "val_metric": "loss", "val_size": 8,
           "checkpoint_every": 2}
    result = train(tiny_model(len(tokenizer)), tiny_model(len(tokenizer), hidden=48), tokenizer, get_method("kd"),
                   examples, records[200:208], examples[:8], train_config(cfg), checkpoint_dir=tmp_path)

    def best_at(step):  # the best validated step up to ``step``, from the history
        evaluated = [h for h in result.history if "val_loss" in h and h["step"] <= step]
        return min(evaluated, key=lambda h: (h["val_loss"], h["step"]))["step"]

    named = {torch.load(tmp_path / f"step-{s:07d}.pt", weights_only=True)["best"] for s in (6, 8)}
    assert named == {f"best-{best_at(s):07d}" for s in (6, 8)}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["step-0000006.pt", "step-0000008.pt",
                                                                 *(f"{n}.pt" for n in named)])


def test_checkpoints_of_another_run_are_refused(tmp_path, tokenizer, records):
    from mgsr_bench.config import train_config
    from mgsr_bench.data.collate import tokenize_records
    from mgsr_bench.methods import get_method
    from mgsr_bench.train import train

    examples = tokenize_records(records[:64], tokenizer)
    cfg = {"steps": 4, "micro_batch": 8, "eval_every": 4, "val_metric": "loss", "val_size": 8, "checkpoint_every": 1}
    train(tiny_model(len(tokenizer)), tiny_model(len(tokenizer), hidden=48), tokenizer, get_method("kd"), examples,
          records[200:208], examples[:8], train_config(cfg), checkpoint_dir=tmp_path)
    assert [p.name for p in sorted(tmp_path.glob("step-*.pt"))] == ["step-0000002.pt", "step-0000003.pt"]  # keep 2
    with pytest.raises(UserError, match="holds checkpoints of a different run"):
        train(tiny_model(len(tokenizer)), tiny_model(len(tokenizer), hidden=48), tokenizer, get_method("kd"),
              examples, records[200:208], examples[:8], train_config({**cfg, "lr": 5e-3}), checkpoint_dir=tmp_path)


def test_a_non_finite_loss_stops_the_run_naming_the_step_with_its_state_and_batch_saved(tmp_path, tokenizer,
                                                                                        records):
    from mgsr_bench.config import train_config
    from mgsr_bench.data.collate import tokenize_records
    from mgsr_bench.methods import get_method
    from mgsr_bench.train import train

    method = get_method("kd")
    calls = {"n": 0}
    token_losses = method.token_losses

    def poisoned(student_logits, teacher_logits, tokens):
        calls["n"] += 1
        loss = token_losses(student_logits, teacher_logits, tokens)
        return loss * float("nan") if calls["n"] == 3 else loss  # the third micro-batch: step 3

    method.token_losses = poisoned
    student = tiny_model(len(tokenizer))
    examples = tokenize_records(records[:64], tokenizer)
    cfg = train_config({"steps": 6, "micro_batch": 8, "eval_every": 6, "val_metric": "loss", "val_size": 8})
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 3 .*nonfinite-step-3\.pt"):
        train(student, tiny_model(len(tokenizer), hidden=48), tokenizer, method, examples, records[200:208],
              examples[:8], cfg, checkpoint_dir=tmp_path)
    saved = torch.load(tmp_path / "nonfinite-step-3.pt", weights_only=True)
    assert saved["step"] == 2 and len(saved["batch"]) == 8 and len(saved["history"]) == 2
    assert all(torch.isfinite(v).all() for v in saved["student"].values())  # the weights before the bad step


def test_evaluation_resumes_per_dataset_and_seed_without_regenerating(tmp_path, tokenizer, records, monkeypatch):
    import mgsr_bench.eval.evaluate as evaluate
    from mgsr_bench.eval.generate import EvalSettings

    model = tiny_model(len(tokenizer))
    data = {"a": records[:6], "b": records[6:12]}
    settings = EvalSettings(seeds=(10, 20), max_new_tokens=8, no_repeat_ngram_size=0)
    calls = []
    real = evaluate.generate

    def counting(*args, seed=None, **kwargs):
        calls.append(seed)
        return real(*args, seed=seed, **kwargs)

    monkeypatch.setattr(evaluate, "generate", counting)
    first = evaluate.evaluate_model(model, tokenizer, data, settings, cache_dir=tmp_path)
    assert len(calls) == 4
    (tmp_path / "b-20.json").unlink()  # as if killed before the last (dataset, seed) finished
    second = evaluate.evaluate_model(model, tokenizer, data, settings, cache_dir=tmp_path)
    assert len(calls) == 5 and calls[-1] == 20 and second == first
    other = evaluate.evaluate_model(model, tokenizer, data, EvalSettings(seeds=(10, 20), max_new_tokens=9,
                                                                         no_repeat_ngram_size=0), cache_dir=tmp_path)
    assert len(calls) == 9 and other != first  # other settings never reuse these generations


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_yaml_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | st.dictionaries(st.sampled_from(["method", "options", "train", "description",
                                                                       "reference", "metod", "steps"]),
                                                      _yaml_values, max_size=4).map(json.dumps))
def test_fuzzed_recipes_load_or_fail_with_one_clear_error(tmp_path, text):
    from mgsr_bench.config import load_recipe

    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(str(path))
    except UserError as e:
        assert str(e) and "\n" not in str(e)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=st.dictionaries(st.sampled_from(["label", "scores", "evaluation", "config_hash", "wall_time_s", "created",
                                             "schema_version", "pair", "extra"]), _yaml_values, max_size=3),
       raw=st.text(max_size=40))
def test_fuzzed_records_read_or_fail_with_one_clear_error(tmp_path, edit, raw):
    from mgsr_bench.results import read_record
    from test_results import _record

    for text in (json.dumps({**_record("kd", {"dolly": [1.0]}), **edit}), raw):
        path = tmp_path / "r.json"
        path.write_text(text, encoding="utf-8")
        try:
            read_record(path)
        except UserError as e:
            assert str(e) and "\n" not in str(e)


def test_sigterm_ends_the_block_as_an_exit_and_the_previous_handler_comes_back():
    """Inside ``sigterm_as_exit`` a SIGTERM raises ``SystemExit(143)``, so ``finally`` blocks and
    ``with`` exits run (temporary files removed); outside it the handler before it is back."""
    from mgsr_bench.signals import sigterm_as_exit

    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(SystemExit) as exc:
        with sigterm_as_exit():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs before this returns
            finally:
                cleaned.append(True)
    assert exc.value.code == 128 + signal.SIGTERM == 143 and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before

def test_hub_code_runs_only_with_trust_remote_code(monkeypatch):
    import mgsr_bench.models.loading as loading

    seen = {}

    def fake(name, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", fake)
    with pytest.raises(UserError):
        loading.load_model("some/model")
    assert seen["trust_remote_code"] is False
    with pytest.raises(UserError):
        loading.load_model("some/model", trust_remote_code=True)
    assert seen["trust_remote_code"] is True
