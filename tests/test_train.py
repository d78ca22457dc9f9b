import pytest
import torch
from accelerate import Accelerator

from mgsr_bench.config import train_config
from mgsr_bench.data.collate import tokenize_records
from mgsr_bench.methods import get_method
from mgsr_bench.train import train
from mgsr_bench.train.loop import (Objective, backward_global_batch, micro_batch_loss, response_tokens,
                                   validation_metric)
from mgsr_bench.train.runtime import Runtime

from conftest import tiny_model


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_size", [0, 7])
@pytest.mark.parametrize("method_name", ["sft", "kd", "jsd"])
def test_gradient_accumulation_gives_the_same_loss_and_gradients(method_name, chunk_size, tokenizer, records, teacher):
    """One batch of 8 vs micro-batches of 4, 2 and 3 (uneven): same token-mean loss and gradients,
    with full logits (chunk_size 0) and with the chunked loss."""
    examples = tokenize_records(records[:8], tokenizer)
    assert len({len(e.response_ids) for e in examples}) > 1  # unequal lengths make naive averaging wrong
    method = get_method(method_name)
    totals = {"tokens": response_tokens(examples)}
    runtime = Runtime.of(Accelerator())
    teacher = teacher.double().to(runtime.device)
    results = []
    for micro in (8, 4, 2, 3):
        student = tiny_model(len(tokenizer), seed=1).double().to(runtime.device)
        objective = Objective(method, student, teacher, len(tokenizer), tokenizer.pad_token_id, micro, chunk_size)
        loss = backward_global_batch(objective, examples, totals, runtime)
        results.append((loss, _grads(student)))
    ref_loss, ref_grads = results[0]
    for loss, grads in results[1:]:
        assert loss == pytest.approx(ref_loss, rel=1e-12)
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-10, atol=1e-12)


def test_naive_micro_batch_averaging_would_differ(tokenizer, records):
    """The check above can fail: averaging per-micro-batch means gives a different loss."""
    examples = tokenize_records(records[:8], tokenizer)
    method = get_method("sft")
    runtime = Runtime.of(Accelerator())
    student = tiny_model(len(tokenizer), seed=1).double().to(runtime.device)
    objective = Objective(method, student, None, len(tokenizer), tokenizer.pad_token_id, 8)
    global_mean = backward_global_batch(objective, examples, {"tokens": response_tokens(examples)}, runtime)
    naive = sum(backward_global_batch(objective, examples[i:i + 2], {"tokens": response_tokens(examples[i:i + 2])},
                                      runtime)
                for i in range(0, 8, 2)) / 4
    assert abs(naive - global_mean) > 1e-6


@pytest.mark.slow
def test_training_reduces_loss_keeps_teacher_frozen_and_restores_best(tokenizer, records, teacher):
    examples = tokenize_records(records[:200], tokenizer)
    valid = records[200:]
    valid_ex = tokenize_records(valid, tokenizer)
    student = tiny_model(len(tokenizer), seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = train_config({"steps": 12, "micro_batch": 4, "grad_accum": 2, "lr": 5e-3, "eval_every": 4,
                        "val_metric": "loss", "val_size": 40})
    result = train(student, teacher, tokenizer, get_method("kd"), examples, valid, valid_ex, cfg)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert all(torch.equal(v, teacher.state_dict()[k].cpu()) for k, v in before.items())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    vals = [h["val_loss"] for h in result.history if "val_loss" in h]
    assert len(vals) == 3 and min(vals) > 0 and result.best_score == -min(vals)
    again = validation_metric(student, tokenizer, valid, valid_ex, cfg, next(student.parameters()).device)
    assert again == pytest.approx(-result.best_score, rel=1e-5)


def test_kd_without_teacher_is_refused(tokenizer, records):
    examples = tokenize_records(records[:8], tokenizer)
    cfg = train_config({"steps": 1, "micro_batch": 4, "val_metric": "loss"})
    with pytest.raises(ValueError, match="needs a teacher"):
        train(tiny_model(len(tokenizer)), None, tokenizer, get_method("kd"), examples, records[:4],
              examples[:4], cfg)


@pytest.mark.slow
def test_every_registered_method_and_recipe_trains_a_step(tokenizer, records, teacher):
    from mgsr_bench.config import available_recipes, load_recipe
    from mgsr_bench.methods import available_methods

    examples = tokenize_records(records[:16], tokenizer)
    cfg = train_config({"steps": 1, "micro_batch": 8, "val_metric": "loss", "val_size": 8})
    recipes = [load_recipe(str(p)) for p in available_recipes().values()]
    assert {r.method for r in recipes} == set(available_methods())  # every method ships a recipe
    for recipe in recipes:
        student = tiny_model(len(tokenizer), seed=1)
        result = train(student, teacher, tokenizer, get_method(recipe.method, **recipe.options), examples,
                       records[16:24], tokenize_records(records[16:24], tokenizer), cfg, desc=recipe.name)
        assert len(result.history) == 1 and result.history[0]["loss"] > 0, recipe.name


@pytest.mark.parametrize("method_name", ["sft", "kd", "rkl"])
def test_chunked_loss_equals_full_logits_in_the_harness(method_name, tokenizer, records, teacher):
    from mgsr_bench.data.collate import collate

    batch = collate(tokenize_records(records[:6], tokenizer), tokenizer.pad_token_id)
    method = get_method(method_name)
    teacher = teacher.double()
    results = []
    for chunk_size in (0, 5, 10_000):
        student = tiny_model(len(tokenizer), seed=1).double()
        loss = micro_batch_loss(Objective(method, student, teacher, len(tokenizer), tokenizer.pad_token_id,
                                          chunk_size=chunk_size), batch)
        loss.backward()
        results.append((loss.item(), _grads(student)))
    for loss, grads in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-12)
        for name, g in results[0][1].items():
            torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12)


def test_logits_are_cut_to_the_tokenizer_vocabulary(tokenizer, records, teacher):
    """A teacher with a padded embedding matrix (Qwen2.5: 151936 vs 152064) is sliced, not refused."""
    from mgsr_bench.data.collate import collate

    batch = collate(tokenize_records(records[:4], tokenizer), tokenizer.pad_token_id)
    padded = tiny_model(len(tokenizer) + 64, seed=2, hidden=48)
    with torch.no_grad():
        padded.get_output_embeddings().weight[: len(tokenizer)] = teacher.get_output_embeddings().weight
        padded.get_output_embeddings().weight[len(tokenizer):] = 10.0  # would dominate if not sliced
        for name, p in teacher.named_parameters():
            if "embed_tokens" not in name and "lm_head" not in name:
                padded.get_parameter(name).copy_(p)
        padded.get_input_embeddings().weight[: len(tokenizer)] = teacher.get_input_embeddings().weight
    method = get_method("kd")
    student = tiny_model(len(tokenizer), seed=1)
    for chunk_size in (0, 8):
        a = micro_batch_loss(Objective(method, student, teacher, len(tokenizer), tokenizer.pad_token_id,
                                       chunk_size=chunk_size), batch)
        b = micro_batch_loss(Objective(method, student, padded, len(tokenizer), tokenizer.pad_token_id,
                                       chunk_size=chunk_size), batch)
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_sampling_methods_train_on_their_sources(tokenizer, records, teacher):
    examples = tokenize_records(records[:64], tokenizer)
    valid, valid_ex = records[64:72], tokenize_records(records[64:72], tokenizer)
    cfg = train_config({"steps": 4, "micro_batch": 8, "val_metric": "loss", "val_size": 8, "eval_every": 2,
                        "gen_max_new_tokens": 8})

    def sources(method):
        result = train(tiny_model(len(tokenizer), seed=1), teacher, tokenizer, method, examples, valid, valid_ex, cfg)
        return result.history

    assert [h["source"] for h in sources(get_method("gkd", lmbda=1.0))] == ["student"] * 4
    assert [h["source"] for h in sources(get_method("seqkd"))] == ["teacher"] * 4
    assert [h["source"] for h in sources(get_method("jsd"))] == ["ground_truth"] * 4
    assert [h["source"] for h in sources(get_method("fdistill-kl"))] == ["teacher"] * 4
    assert [h["source"] for h in sources(get_method("fdistill-rkl"))] == ["student"] * 4
    assert [h["source"] for h in sources(get_method("fdistill-js"))] == ["both"] * 4
    history = sources(get_method("distillm", init_threshold=1.0, capacity=8, replay_ratio="constant"))
    assert history[0]["source"] == "student"  # the buffer starts empty: the first draw below 1 generates
    assert {h["source"] for h in history} <= {"student", "replay"}
    assert [h["step"] for h in history if "replay_threshold" in h] == [2, 4]


def test_fdistill_js_takes_each_kl_term_on_its_own_samples():
    from mgsr_bench.data.collate import ORIGINS, TokenBatch
    from mgsr_bench.losses.divergences import jsd_terms

    torch.manual_seed(0)
    s, t = torch.randn(6, 11, dtype=torch.float64), torch.randn(6, 11, dtype=torch.float64)
    origin = torch.tensor([ORIGINS.index(o) for o in ["teacher"] * 3 + ["student"] * 3])
    loss = get_method("fdistill-js").token_losses(s, t, TokenBatch(torch.zeros(6, dtype=torch.long), origin))
    kl_p_m, kl_q_m = jsd_terms(s, t, 0.5)
    torch.testing.assert_close(loss, torch.cat([kl_p_m[:3], kl_q_m[3:]]))


def test_sequences_past_a_models_positions_are_refused_before_any_compute(tokenizer, records, teacher):
    """GPT-2's learned positions end in an index error mid-run: the training data, the sampled
    responses (longest prompt + train.gen_max_new_tokens) and evaluation's budget (--max-length)
    are checked against each model's positions first, in one line naming the fix."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mgsr_bench.data.collate import Example
    from mgsr_bench.errors import UserError
    from mgsr_bench.eval.generate import EvalSettings, generate

    examples = [Example(list(range(3, 13)), list(range(20, 20 + n))) for n in (6, 3, 5, 4)] * 2  # at most 16 tokens

    def gpt2(positions):
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2,
                                          n_positions=positions))

    cfg = train_config({"steps": 1, "micro_batch": 4, "val_metric": "loss", "val_size": 4,
                        "gen_max_new_tokens": 16})
    short = gpt2(15)
    before = [p.detach().clone() for p in short.parameters()]
    with pytest.raises(UserError, match="longest training or validation example is 16 tokens, past the "
                                        "student's 15 positions"):
        train(short, teacher, tokenizer, get_method("kd"), examples, [], examples[:4], cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, short.parameters()))  # nothing trained
    with pytest.raises(UserError, match="past the teacher's 15 positions"):
        train(tiny_model(len(tokenizer), seed=1), gpt2(15), tokenizer, get_method("kd"), examples, [],
              examples[:4], cfg)
    # 20 positions hold the data (16 tokens) but not a prompt and its 16 sampled tokens (26)
    with pytest.raises(UserError, match="longest prompt plus train.gen_max_new_tokens is 26 tokens, past the "
                                        "student's 20 positions: lower train.gen_max_new_tokens"):
        train(gpt2(20), teacher, tokenizer, get_method("gkd", lmbda=1.0), examples, [], examples[:4], cfg)
    train(gpt2(20), teacher, tokenizer, get_method("kd"), examples, [], examples[:4], cfg)  # kd samples nothing
    with pytest.raises(UserError, match="past the model's 64 positions: lower --max-length or --max-new-tokens"):
        generate(gpt2(64), tokenizer, [records[0]["prompt"]], EvalSettings(max_length=128))
    generate(gpt2(64), tokenizer, [records[0]["prompt"]], EvalSettings(max_length=64))


class Killed(Exception):
    """Stands for a kill in the middle of a run."""


def scripted_validation(monkeypatch, scores, seen=None):
    """Replace the validation ROUGE-L (higher is better) with ``scores`` in order (a ``Killed`` entry
    kills the run there); with ``seen``, keep a copy of the weights each validation saw."""
    from mgsr_bench.train import loop

    script = iter(scores)

    def score(model, *args):
        value = next(script)
        if value is Killed:
            raise Killed
        if seen is not None:
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return value

    monkeypatch.setattr(loop, "validation_metric", score)


def _patience_run(tokenizer, records, monkeypatch, scores, checkpoint_dir=None, seen=None, **overrides):
    examples = tokenize_records(records[:64], tokenizer)
    cfg = train_config({"steps": 12, "micro_batch": 8, "lr": 5e-3, "eval_every": 2, "val_metric": "rougeL",
                        "val_size": 8, "patience": 2, **overrides})
    scripted_validation(monkeypatch, scores, seen)
    student = tiny_model(len(tokenizer), seed=1)
    result = train(student, None, tokenizer, get_method("sft"), examples, records[200:208], examples[:8], cfg,
                   checkpoint_dir=checkpoint_dir)
    return student, result


def test_patience_stops_at_the_expected_step_with_the_best_weights(tokenizer, records, monkeypatch):
    """Validated every 2 steps with patience 2: best at step 4, no new best at 6 and 8 (a tie is none),
    so the run stops after step 8 of 12, holding step 4's weights, and says so."""
    seen = []
    student, result = _patience_run(tokenizer, records, monkeypatch, [1.0, 2.0, 1.5, 2.0, 9.0, 9.0], seen=seen)
    assert (result.steps_run, result.stopped_early, result.best_step, result.best_score) == (8, True, 4, 2.0)
    assert [h["step"] for h in result.history] == list(range(1, 9))
    assert result.history[-1]["stopped_early"] and not any("stopped_early" in h for h in result.history[:-1])
    assert len(seen) == 4  # no validation after the stop
    assert all(torch.equal(v, seen[1][k]) for k, v in student.state_dict().items())
    assert not all(torch.equal(v, seen[3][k]) for k, v in student.state_dict().items())  # it did train on
    assert result.seconds_per_step == pytest.approx(result.wall_time_s / 8)


@pytest.mark.slow
def test_patience_zero_runs_every_step(tokenizer, records, monkeypatch):
    _, result = _patience_run(tokenizer, records, monkeypatch, [1.0, 2.0, 1.5, 1.0, 0.5, 0.1], patience=0)
    assert (result.steps_run, result.stopped_early, result.best_step) == (12, False, 4)
    assert len(result.history) == 12 and not any("stopped_early" in h for h in result.history)
    assert result.seconds_per_step == pytest.approx(result.wall_time_s / 12)


@pytest.mark.slow
def test_a_resumed_run_keeps_its_count_of_validations_without_improvement(tokenizer, records, monkeypatch,
                                                                          tmp_path):
    """Checkpointed at step 6, after one validation without a new best (step 6), and killed at step 8's
    validation: the resumed run stops after step 8 like the uninterrupted one (a count restarted from 0
    would run to step 10), with the same weights."""
    scores = [1.0, 2.0, 1.5, 1.7, 3.0, 3.0]
    whole, uninterrupted = _patience_run(tokenizer, records, monkeypatch, scores)
    assert uninterrupted.steps_run == 8
    with pytest.raises(Killed):
        _patience_run(tokenizer, records, monkeypatch, [*scores[:3], Killed], tmp_path, checkpoint_every=3)
    assert torch.load(tmp_path / "step-0000006.pt", weights_only=True)["stale_validations"] == 1
    resumed, result = _patience_run(tokenizer, records, monkeypatch, scores[3:], tmp_path, checkpoint_every=3)
    assert (result.steps_run, result.stopped_early, result.best_step) == (8, True, 4)
    assert [h["step"] for h in result.history] == list(range(1, 9))
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in resumed.state_dict().items())


def test_validation_generates_up_to_val_max_new_tokens(tokenizer, records, monkeypatch):
    from mgsr_bench.train import loop

    asked = []
    monkeypatch.setattr(loop, "generate", lambda model, tok, prompts, settings: asked.append(settings) or
                        ["x"] * len(prompts))
    cfg = train_config({"val_max_new_tokens": 128, "val_size": 4})
    validation_metric(tiny_model(len(tokenizer)), tokenizer, records[:4], [], cfg, torch.device("cpu"))
    assert asked[0].max_new_tokens == 128 and asked[0].greedy


@pytest.mark.parametrize("bad, message", [({"patience": -1}, "train.patience must be >= 0"),
                                          ({"val_max_new_tokens": 0}, "train.val_max_new_tokens must be >= 1"),
                                          ({"patience": 1.5}, "train.patience must be of type int")])
def test_bad_stopping_settings_are_refused_in_one_line(bad, message):
    from mgsr_bench.errors import UserError

    with pytest.raises(UserError, match=message) as refused:
        train_config(bad)
    assert "\n" not in str(refused.value)


