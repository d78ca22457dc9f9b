"""What a training run cost, counted per step and summed in the run record."""

from __future__ import annotations

import pytest

from mgsr_bench.config import train_config
from mgsr_bench.data.collate import collate, tokenize_records
from mgsr_bench.methods import get_method
from mgsr_bench.train import train
from mgsr_bench.train.cost import estimated_flops, training_cost

from conftest import tiny_model

SETTINGS = {"steps": 3, "micro_batch": 4, "val_metric": "loss", "val_size": 4, "eval_every": 1,
            "gen_max_new_tokens": 6}


def _trained(method_name, tokenizer, records, teacher, **options):
    examples = tokenize_records(records[:12], tokenizer)
    return train(tiny_model(len(tokenizer), seed=1), teacher, tokenizer, get_method(method_name, **options),
                 examples, records[12:16], tokenize_records(records[12:16], tokenizer), train_config(SETTINGS))


def _padded_positions(examples, pad_id) -> int:
    return collate(examples, pad_id)["input_ids"].numel()


def test_each_step_counts_the_positions_through_student_and_teacher_and_validation_is_not_counted(
        tokenizer, records, teacher):
    kd = _trained("kd", tokenizer, records, teacher)
    sft = _trained("sft", tokenizer, records, teacher)
    for h in kd.history:  # the same micro-batches through both models, the training forward only
        assert h["student_tokens"] == h["teacher_tokens"] > 0
        assert h["student_sampling_tokens"] == h["generated_tokens"] == 0
    assert [h["student_tokens"] for h in sft.history] == [h["student_tokens"] for h in kd.history]
    assert all(h["teacher_tokens"] == 0 for h in sft.history)
    # one micro-batch of 4 per step: its padded positions, whatever validation ran between steps
    examples = tokenize_records(records[:12], tokenizer)
    assert all(h["student_tokens"] <= _padded_positions(examples, tokenizer.pad_token_id) for h in kd.history)
    cost = kd.cost
    assert cost["device"] == "cpu" and cost["processes"] == 1
    assert cost["device_seconds"] == pytest.approx(kd.wall_time_s, abs=0.01)
    assert cost["training_tokens"] == sum(h["tokens"] for h in kd.history)
    assert cost["teacher_forward_tokens"] == cost["student_forward_tokens"] == sum(h["student_tokens"]
                                                                                  for h in kd.history)


def test_sampling_steps_count_the_generated_tokens_and_the_passes_without_gradients(tokenizer, records, teacher):
    gkd = _trained("gkd", tokenizer, records, teacher, lmbda=1.0)
    for h in gkd.history:
        assert h["source"] == "student" and h["generated_tokens"] > 0
        # sampling runs the student without gradients over at least the prompts and every sampled token
        assert h["student_sampling_tokens"] >= h["generated_tokens"]
        assert h["teacher_tokens"] == h["student_tokens"] > 0  # the loss's forward over the same sampled rows


def test_training_cost_sums_the_steps_and_the_flop_estimate_weighs_each_count():
    history = [{"tokens": 5, "student_tokens": 10, "student_sampling_tokens": 3, "teacher_tokens": 10,
                "generated_tokens": 2}, {"tokens": 7, "student_tokens": 12}]
    cost = training_cost(history, 10.0, 4, "NVIDIA H100")
    assert cost == {"device": "NVIDIA H100", "processes": 4, "device_seconds": 40.0, "training_tokens": 12,
                    "student_forward_tokens": 22, "student_sampling_tokens": 3, "teacher_forward_tokens": 10,
                    "generated_tokens": 2}
    assert estimated_flops(cost, 100, 1000) == 6 * 100 * 22 + 2 * 100 * 3 + 2 * 1000 * 10
    # steps without counts (ZeRO-3 runs that sample): the cost holds no counts rather than zeros
    uncounted = training_cost([{"tokens": 5}, {"tokens": 7}], 10.0, 1, "cpu")
    assert uncounted == {"device": "cpu", "processes": 1, "device_seconds": 10.0, "training_tokens": 12}


def test_the_counters_leave_the_models_as_they_were_a_failed_run_too(tokenizer, records, teacher):
    result = _trained("kd", tokenizer, records, teacher)
    assert not teacher.get_input_embeddings()._forward_pre_hooks
    assert not result.model.get_input_embeddings()._forward_pre_hooks
    method = get_method("kd")

    def broken(*args):
        raise RuntimeError("a loss that fails in the first step")

    method.token_losses = broken
    examples = tokenize_records(records[:12], tokenizer)
    with pytest.raises(RuntimeError, match="fails in the first step"):
        train(tiny_model(len(tokenizer), seed=1), teacher, tokenizer, method, examples, records[12:16],
              tokenize_records(records[12:16], tokenizer), train_config(SETTINGS))
    assert not teacher.get_input_embeddings()._forward_pre_hooks
