import pytest
import torch

from mgsr_bench.data.collate import IGNORE, Example, collate, shifted_labels, tokenize_records
from mgsr_bench.sampling import BatchSource, SourceSpec, decode

from conftest import tiny_model


def test_sampled_batches_mask_padding_but_keep_the_generated_eos(tokenizer, records):
    """pad == eos: the generated EOS is a loss target, the padding after it is not."""
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos
    prompts = [e.prompt_ids for e in tokenize_records(records[:2], tokenizer)]
    batch = collate([Example(prompts[0], [11, 12, eos]), Example(prompts[1], [13, eos])], tokenizer.pad_token_id)
    targets = shifted_labels(batch["labels"])
    assert [t for t in targets[1].tolist() if t != IGNORE] == [13, eos]
    assert [t for t in targets[0].tolist() if t != IGNORE] == [11, 12, eos]


def test_real_sampling_is_reproducible_and_ends_at_eos(tokenizer, records):
    model = tiny_model(len(tokenizer))
    prompts = [e.prompt_ids for e in tokenize_records(records[:6], tokenizer)]
    a, b = (decode(model, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id, 12,
                   generator=torch.Generator().manual_seed(3)).tokens for _ in range(2))
    assert a == b and len(a) == 6
    for r in a:
        assert 1 <= len(r) <= 12
        assert tokenizer.eos_token_id not in r[:-1]


def test_source_choice_follows_the_probabilities_and_the_seed(tokenizer):
    spec = SourceSpec(student_prob=0.3, teacher_prob=0.2)
    src, twin = BatchSource(spec, tokenizer, 8, 1.0, seed=5), BatchSource(spec, tokenizer, 8, 1.0, seed=5)
    draws = [src.choose() for _ in range(4000)]
    assert draws == [twin.choose() for _ in range(4000)]  # every process draws the same sources
    freq = {k: draws.count(k) / len(draws) for k in ("student", "teacher", "ground_truth")}
    assert freq["student"] == pytest.approx(0.3, abs=0.03) and freq["teacher"] == pytest.approx(0.2, abs=0.03)
    assert {BatchSource(SourceSpec(), tokenizer, 8, 1.0, 0).choose() for _ in range(20)} == {"ground_truth"}


def test_batch_source_replaces_responses_with_model_samples(tokenizer, records):
    examples = tokenize_records(records[:4], tokenizer)
    student, teacher = tiny_model(len(tokenizer), seed=1), tiny_model(len(tokenizer), seed=2)
    src = BatchSource(SourceSpec(teacher_prob=1.0), tokenizer, max_new_tokens=6, temperature=1.0, seed=0)
    out, origin = src(examples, student, teacher)
    assert origin == "teacher" and src.counts["teacher"] == 1
    assert [e.prompt_ids for e in out] == [e.prompt_ids for e in examples]
    assert all(1 <= len(e.response_ids) <= 6 for e in out)


def test_both_source_splits_rows_between_teacher_and_student_and_records_origins(tokenizer, records):
    examples = tokenize_records(records[:6], tokenizer)
    student, teacher = tiny_model(len(tokenizer), seed=1), tiny_model(len(tokenizer), seed=2)
    src = BatchSource(SourceSpec(both=True), tokenizer, max_new_tokens=6, temperature=1.0, seed=0)
    out, origin = src(examples, student, teacher)
    assert origin == "both"
    assert [e.origin for e in out] == ["teacher"] * 3 + ["student"] * 3
    assert [e.prompt_ids for e in out] == [e.prompt_ids for e in examples]
    batch = collate(out, tokenizer.pad_token_id)
    assert batch["origin"].tolist() == [2, 2, 2, 1, 1, 1]


def test_a_source_restored_from_its_state_dict_goes_on_as_the_original(tokenizer, records, tmp_path):
    """Generators, counts, threshold, reference loss and replay buffer survive a round trip through
    a checkpoint file (``torch.load(weights_only=True)``, which gives lists for tuples)."""
    from mgsr_bench.sampling.replay import AdaptiveSchedule

    spec = SourceSpec(adaptive=AdaptiveSchedule(init_threshold=0.6, capacity=4))
    src = BatchSource(spec, tokenizer, 8, 1.0, seed=3)
    src.adaptive.store([Example([1, 2], [3, 4], origin="student"), Example([5], [6], origin="student")])
    src.observe_validation_loss(2.0)
    src.counts["student"] = 2
    [src.choose(step, 10, 2) for step in range(3)]
    torch.save(src.state_dict(), tmp_path / "state.pt")
    twin = BatchSource(spec, tokenizer, 8, 1.0, seed=0)
    twin.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert twin.counts == src.counts and list(twin.adaptive.buffer) == list(src.adaptive.buffer)
    assert (twin.adaptive.threshold, twin.adaptive.reference_loss) == (src.adaptive.threshold, 2.0)
    assert [twin.choose(step, 10, 2) for step in range(3, 40)] == [src.choose(step, 10, 2) for step in range(3, 40)]
    assert twin.adaptive.replay(2) == src.adaptive.replay(2)


def test_bad_specs_are_refused():
    with pytest.raises(ValueError):
        SourceSpec(student_prob=1.5)
    with pytest.raises(ValueError):
        SourceSpec(student_prob=0.6, teacher_prob=0.6)


def test_adaptive_threshold_rises_only_on_a_validation_loss_increase():
    from mgsr_bench.sampling.replay import AdaptiveOffPolicy, AdaptiveSchedule

    policy = AdaptiveOffPolicy(AdaptiveSchedule(init_threshold=0.0, loss_eps=0.1), seed=0)
    for loss, expected in [(2.0, 0.0), (1.5, 0.0), (2.05, 0.0), (2.1, 0.1), (2.15, 0.1), (2.2, 0.2), (9.0, 0.3)]:
        policy.observe_validation_loss(loss)
        assert policy.threshold == pytest.approx(expected), loss
    for _ in range(20):
        policy.observe_validation_loss(policy.reference_loss + 1)
    assert policy.threshold == 1.0


@pytest.mark.parametrize("ratio,at_start,at_end", [("decreasing", 1.0, 0.0), ("constant", 0.5, 0.5),
                                                   ("increasing", 0.0, 1.0)])
def test_replay_schedules(ratio, at_start, at_end):
    from mgsr_bench.sampling.replay import AdaptiveOffPolicy, AdaptiveSchedule

    policy = AdaptiveOffPolicy(AdaptiveSchedule(init_threshold=1.0, replay_ratio=ratio), seed=0)
    assert policy.sample_threshold(0, 100) == pytest.approx(at_start)
    assert policy.sample_threshold(100, 100) == pytest.approx(at_end)


def test_adaptive_choice_generates_until_the_buffer_is_full_then_replays():
    from mgsr_bench.sampling.replay import AdaptiveOffPolicy, AdaptiveSchedule

    policy = AdaptiveOffPolicy(AdaptiveSchedule(init_threshold=1.0, capacity=8, replay_ratio="constant"), seed=1)
    assert policy.choose(1, 10, batch_size=4) == "student"  # below the threshold and not full
    policy.store([Example([1], [2])] * 8)
    draws = [policy.choose(1, 10, batch_size=4) for _ in range(400)]
    # Full buffer, threshold 1: r < 0.5 generates, the rest replays; nothing falls to ground truth.
    assert set(draws) == {"student", "replay"} and 0.4 < draws.count("student") / 400 < 0.6
    assert len(policy.replay(4)) == 4
    cold = AdaptiveOffPolicy(AdaptiveSchedule(init_threshold=0.0), seed=1)
    assert {cold.choose(s, 10, 4) for s in range(10)} == {"ground_truth"}


@pytest.mark.parametrize("method,gathered", [("gkd", ["student"]), ("seqkd", ["teacher"]),
                                             ("fdistill-js", ["student", "teacher"]),
                                             ("mgsr", ["student", "teacher"])])
def test_a_sampling_step_gathers_only_the_models_it_samples_from(tokenizer, records, method, gathered):
    """Under a sharded engine each sampling call gathers whole models: only the sampling model,
    and the teacher when SCRG revises the student's samples; ground-truth steps gather nothing.
    The models the gather gives are the ones that run (the sharded originals never do)."""
    from contextlib import contextmanager

    from mgsr_bench.methods import get_method

    examples = tokenize_records(records[:4], tokenizer)
    student, teacher = tiny_model(len(tokenizer), seed=1), tiny_model(len(tokenizer), seed=2)
    forwards = {"student": 0, "teacher": 0, "student copy": 0, "teacher copy": 0}

    def counted(model, name):
        model.register_forward_hook(lambda *_: forwards.__setitem__(name, forwards[name] + 1))
        return model

    counted(student, "student"), counted(teacher, "teacher")
    calls = []

    @contextmanager
    def gather(*models):
        names = [name for name, m in zip(("student", "teacher"), models) if m is not None]
        calls.append(names)
        yield [counted(tiny_model(len(tokenizer), seed=9), f"{name} copy") if m is not None else None
               for name, m in zip(("student", "teacher"), models)]

    options = {"mgsr": {"init_threshold": 1.0}, "gkd": {"lmbda": 1.0}}.get(method, {})  # sample at the first step
    src = BatchSource(get_method(method, **options).source_spec(), tokenizer, max_new_tokens=4, temperature=1.0,
                      seed=0, gather=gather)
    _, origin = src(examples, student, teacher)
    assert origin != "ground_truth" and calls == [gathered]
    assert {name for name, n in forwards.items() if n} == {f"{name} copy" for name in gathered}
    src.choose = lambda *args: "ground_truth"
    src(examples, student, teacher)
    assert calls == [gathered]
