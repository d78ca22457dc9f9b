"""Cached top-k teacher distributions: every divergence on a :class:`TopK` teacher, in both
conventions for the rest, equals the exact divergence when k is the vocabulary."""

from __future__ import annotations

import functools
import re

import pytest
import torch

from mgsr_bench.losses import divergences as D

DIVERGENCES = {
    "forward_kl": D.forward_kl,
    "forward_kl_ce": functools.partial(D.forward_kl, cross_entropy_form=True),
    "reverse_kl": D.reverse_kl,
    "jsd_0.1": functools.partial(D.generalized_jsd, beta=0.1),
    "jsd_0.5": functools.partial(D.generalized_jsd, beta=0.5),
    "jsd_terms": lambda s, t, temperature: sum(D.jsd_terms(s, t, 0.3, temperature)),
    "tvd": D.total_variation,
    "sfkl": functools.partial(D.skew_forward_kl, alpha=0.1),
    "srkl": functools.partial(D.skew_reverse_kl, alpha=0.1),
    "symmetric_kl": D.symmetric_kl,
    "abkd": functools.partial(D.alpha_beta_divergence, alpha=0.5, beta=0.5),
    "abkd_0.2_0.7": functools.partial(D.alpha_beta_divergence, alpha=0.2, beta=0.7),
}


def topk(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0, renormalize: bool = False) -> D.TopK:
    logprobs = torch.log_softmax(teacher_logits / temperature, -1)
    values, ids = logprobs.topk(k, dim=-1)
    return D.TopK(ids.int(), values, temperature, renormalize)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_with_k_equal_to_the_vocabulary_every_divergence_and_gradient_is_the_exact_one(name, renormalize, dtype, tol):
    g = torch.Generator().manual_seed(0)
    student = (3 * torch.randn(12, 97, generator=g, dtype=dtype)).requires_grad_()
    teacher = 3 * torch.randn(12, 97, generator=g, dtype=dtype)
    f = DIVERGENCES[name]
    exact = f(student, teacher, temperature=2.0)
    (grad_exact,) = torch.autograd.grad(exact.sum(), student)
    cached = f(student, topk(teacher, 97, 2.0, renormalize), temperature=2.0)
    (grad_cached,) = torch.autograd.grad(cached.sum(), student)
    assert cached.dtype == dtype and torch.isfinite(cached).all()
    torch.testing.assert_close(cached, exact, atol=tol, rtol=tol)
    torch.testing.assert_close(grad_cached, grad_exact, atol=tol, rtol=tol)


def test_the_reduced_distributions_are_proper_and_the_rest_bucket_penalises_mass_outside_the_top_k():
    g = torch.Generator().manual_seed(1)
    teacher = 4 * torch.randn(5, 50, generator=g)
    cache = topk(teacher, 8)
    log_q, log_p = D.log_prob_pair(teacher, cache, 1.0)
    assert log_q.shape == log_p.shape == (5, 9)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(5))
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(5))
    # a student with the teacher's odds among its top 8, but most of its mass on the other tokens
    student = teacher.clone()
    outside = torch.ones_like(teacher, dtype=torch.bool).scatter(1, cache.ids.long(), False)
    student[outside] += 6.0
    bucket = D.forward_kl(student, cache)
    renormalized = D.forward_kl(student, topk(teacher, 8, renormalize=True))
    assert (bucket > 0.5).all()  # the student's lost mass is seen
    torch.testing.assert_close(renormalized, torch.zeros(5), atol=1e-5, rtol=0)  # and here it is not


def test_a_cache_at_another_temperature_is_refused():
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match="temperature 1.0, the loss asks for 2.0"):
        D.forward_kl(logits, topk(logits, 4, 1.0), temperature=2.0)


# --- the cache on disk and in the training loop ----------------------------------------------------

from accelerate import Accelerator  # noqa: E402

from conftest import tiny_model  # noqa: E402
from mgsr_bench.data.collate import prompts_within, token_digest, tokenize_records  # noqa: E402
from mgsr_bench.errors import UserError  # noqa: E402
from mgsr_bench.methods import get_method  # noqa: E402
from mgsr_bench.teacher_cache import (CacheKey, CacheOption, CacheReading, load_cache, state_digest,  # noqa: E402
                                      with_cached_rows, write_cache)
from mgsr_bench.train.loop import Objective, backward_global_batch, response_tokens  # noqa: E402
from mgsr_bench.train.runtime import Runtime  # noqa: E402


def _cache(tmp_path, teacher, tokenizer, examples, k, temperature=1.0):
    key = CacheKey(state_digest(teacher), token_digest(examples), len(tokenizer), k, temperature, "float32")
    folder = write_cache(teacher, examples, tmp_path / f"cache-{k}", key, tokenizer.pad_token_id, batch_size=3)
    return key, folder


@pytest.mark.parametrize("chunk_size", [0, 7])
@pytest.mark.parametrize("method_name", ["kd", "rkl", "jsd", "tvd", "sfkl", "srkl", "abkd", "mgsr"])
def test_the_loop_reading_a_full_cache_gives_the_live_teachers_loss_and_gradients(method_name, chunk_size, tokenizer,
                                                                                  records, teacher, tmp_path):
    examples = tokenize_records(records[:8], tokenizer)
    key, folder = _cache(tmp_path, teacher, tokenizer, examples, len(tokenizer))
    method = get_method(method_name)
    # the method's marks (MGSR's span pairs) on the rows, which keep their cached rows
    cached = method.annotate(with_cached_rows(examples, load_cache(folder, key)), tokenizer)
    examples = method.annotate(examples, tokenizer)
    runtime, totals = Runtime.of(Accelerator()), {**method.batch_counts(examples), "tokens": response_tokens(examples)}
    results = []
    for rows, live, reading in ((examples, teacher, None), (cached, None, CacheReading(key))):
        student = tiny_model(len(tokenizer), seed=1)
        objective = Objective(method, student, live, len(tokenizer), tokenizer.pad_token_id, 4, chunk_size, reading)
        loss = backward_global_batch(objective, rows, totals, runtime)
        results.append((loss, {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6)


def test_a_cache_is_read_only_for_its_teacher_data_and_temperature_and_by_methods_with_a_teacher_distribution(tokenizer, records,
                                                                                            teacher, tmp_path):
    from mgsr_bench.config import load_recipe
    from mgsr_bench.pipeline import train_student

    train, valid = prompts_within(records[:16], tokenizer), records[16:20]
    _, folder = _cache(tmp_path, teacher, tokenizer, tokenize_records(train, tokenizer), 16)
    settings = {"steps": 2, "micro_batch": 4, "eval_every": 1, "val_metric": "loss"}

    def trained(recipe="kd", model=teacher, data=train, **options):
        recipe = load_recipe(recipe)
        recipe = type(recipe)(**{**recipe.__dict__, "options": {**recipe.options, **options}})
        return train_student(recipe, tiny_model(len(tokenizer), seed=1), model, tokenizer, data, valid,
                             train_overrides=settings, teacher_cache=CacheOption(folder))

    run = trained()
    assert run.config["teacher_cache"]["key"]["k"] == 16 and run.config["teacher_cache"]["rest"] == "bucket"
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in run.summary["history"] if "loss" in h)
    for call, says in ((lambda: trained(model=tiny_model(len(tokenizer), seed=5, hidden=48)), "another teacher"),
                       (lambda: trained(temperature=2.0), "another temperature (1.0; this run: 2.0)"),
                       (lambda: trained(data=train[:-1]), "another set of training examples"),
                       (lambda: trained("seqkd"), "method 'seqkd' cannot read a teacher cache"),
                       (lambda: trained("fdistill-kl"), "method 'fdistill-kl' cannot read a teacher cache"),
                       (lambda: trained("gkd", lmbda=1.0), "method 'gkd' cannot read a teacher cache"),
                       (lambda: trained("sft"), "method 'sft' cannot read a teacher cache")):
        with pytest.raises(UserError, match=re.escape(says)):
            call()
    (folder / "manifest.json").unlink()  # what a killed write leaves: never read
    with pytest.raises(UserError, match="is not a teacher cache"):
        trained()


def test_cache_teacher_then_train_from_the_command_line(hub_style_pair, cli):
    p = hub_style_pair
    proc = cli("cache-teacher", "--teacher", str(p / "teacher"), "--train-data", str(p / "train.jsonl"), "--k", "8",
               "--out", str(p / "cache"))
    assert proc.returncode == 0 and "k = 8" in proc.stdout, proc.stderr
    assert sorted(f.name for f in (p / "cache").iterdir()) == ["manifest.json", "topk.safetensors"]
    args = ["train", "kd", "--teacher", str(p / "teacher"), "--student", str(p / "student"), "--train-data",
            str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--steps", "2"]
    proc = cli(*args, "--teacher-cache", str(p / "cache"), "--teacher-cache-rest", "renormalize", "--out", str(p / "r"))
    assert proc.returncode == 0, proc.stderr
    config = __import__("json").loads((p / "r" / "training.json").read_text())["config"]
    assert config["teacher_cache"]["rest"] == "renormalize"
    proc = cli(*args, "--teacher-cache", str(p / "nowhere"), "--out", str(p / "r2"))
    assert proc.returncode == 2 and "is not a teacher cache" in proc.stderr and not (p / "r2").exists()


def test_plan_states_the_caches_disk_size_and_refuses_a_bad_k(cli):
    proc = cli("plan", "gpt2-xl-gpt2", "--method", "kd", "--teacher-cache", "64", "--response-tokens", "2000000")
    assert proc.returncode == 0 and "384 bytes per response token, 0.72 GiB for 2,000,000" in proc.stdout, proc.stderr
    proc = cli("plan", "gpt2-xl-gpt2", "--teacher-cache", "0")
    assert proc.returncode == 2 and proc.stdout == "" and "must be >= 1" in proc.stderr


def test_several_seeds_from_a_cache_run_again_keep_their_finished_runs(hub_style_pair, cli):
    p = hub_style_pair
    assert cli("cache-teacher", "--teacher", str(p / "teacher"), "--train-data", str(p / "train.jsonl"), "--k", "4",
               "--out", str(p / "cache")).returncode == 0
    args = ["train", "kd", "--teacher", str(p / "teacher"), "--student", str(p / "student"), "--train-data",
            str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--steps", "1", "--train-seeds", "1,2",
            "--teacher-cache", str(p / "cache"), "--out", str(p / "kd")]
    assert cli(*args).returncode == 0
    proc = cli(*args)
    assert proc.returncode == 0 and proc.stdout.count("already finished there") == 2, proc.stdout + proc.stderr
    proc = cli(*args[:-4], "--out", str(p / "kd"))  # the same folders without the cache: other settings
    assert proc.returncode == 2 and "holds a finished run of other settings" in proc.stderr


# --- MGSR, which reads the teacher per vocabulary id: the cache's completion ------------------------

def test_the_completion_spreads_the_rest_evenly_and_is_the_teacher_at_k_equal_to_the_vocabulary():
    g = torch.Generator().manual_seed(2)
    teacher = 3 * torch.randn(6, 40, generator=g, dtype=torch.float64)
    full = topk(teacher, 40, 2.0).as_logits(40)
    torch.testing.assert_close(torch.log_softmax(full / 2.0, -1), torch.log_softmax(teacher / 2.0, -1))
    cache = topk(teacher, 5, 2.0)
    p = torch.softmax(cache.as_logits(40) / 2.0, -1)
    exact = torch.softmax(teacher / 2.0, -1)
    torch.testing.assert_close(p.gather(-1, cache.ids.long()), exact.gather(-1, cache.ids.long()))
    outside = torch.ones_like(p, dtype=torch.bool).scatter(1, cache.ids.long(), False)
    rest = p[outside].view(6, 35)
    torch.testing.assert_close(rest, rest[:, :1].expand(-1, 35))  # evenly spread
    torch.testing.assert_close(rest.sum(-1), exact[outside].view(6, 35).sum(-1))  # the mass the k leave
    renormalized = torch.softmax(topk(teacher, 5, 2.0, renormalize=True).as_logits(40) / 2.0, -1)
    assert renormalized[outside].max() < 1e-30


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("options", [{}, {"outside": "bucket"}, {"token_loss": "fkl"}, {"subnet": "fixed"},
                                     {"temperature": 2.0}])
def test_with_k_equal_to_the_vocabulary_mgsrs_loss_and_gradients_are_the_live_ones(options, renormalize):
    from mgsr_bench.data.collate import JOINED, ORIGINS, TokenBatch
    from mgsr_bench.methods.mgsr import PAIRS

    g = torch.Generator().manual_seed(3)
    n, v = 10, 80
    student = (3 * torch.randn(n, v, generator=g, dtype=torch.float64)).requires_grad_()
    teacher = 3 * torch.randn(n, v, generator=g, dtype=torch.float64)
    link = torch.tensor([True, True, False, True, False, False, True, True, True, False])
    tokens = TokenBatch(torch.randint(0, v, (n,), generator=g), torch.full((n,), ORIGINS.index("ground_truth")),
                        {JOINED: link}, {"tokens": n, PAIRS: int(link.sum())})
    method = get_method("mgsr", **options)
    results = []
    for t in (teacher, topk(teacher, v, method.temperature, renormalize)):
        loss = method.token_losses(student, t, tokens)
        results.append((loss, *torch.autograd.grad(loss.sum(), [student, *method.module().parameters()]
                                                   if method.module() is not None else [student])))
    stats = method.step_stats()
    assert stats["mgsr_span"] > 0 and ("mgsr_dac" in stats) == (method.token_loss == "dac_kl")
    for cached, live in zip(results[1], results[0]):
        torch.testing.assert_close(cached, live, rtol=1e-9, atol=1e-12)


def test_dac_kls_ranks_stop_at_the_caches_k():
    from mgsr_bench.data.collate import TokenBatch

    g = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(6, 50, generator=g), 2 * torch.randn(6, 50, generator=g)
    method = get_method("mgsr", sft_weight=0.0, span_weight=0.0, subnet="fixed", top_k_max=256)
    tokens = TokenBatch(teacher.argmax(-1))
    cached = topk(teacher, 8)
    expected = get_method("mgsr", sft_weight=0.0, span_weight=0.0, subnet="fixed", top_k_max=8).token_losses(
        student, cached.as_logits(50), tokens)
    torch.testing.assert_close(method.token_losses(student, cached, tokens), expected)


def test_mgsr_reads_the_cache_on_ground_truth_batches_and_the_live_teacher_on_its_samples(tokenizer, records,
                                                                                      teacher, tmp_path):
    from mgsr_bench.config import load_recipe
    from mgsr_bench.pipeline import train_student

    train, valid = prompts_within(records[:16], tokenizer), records[16:20]
    _, folder = _cache(tmp_path, teacher, tokenizer, tokenize_records(train, tokenizer), 16)
    recipe = load_recipe("mgsr")
    # the replay schedule at one half: both sources within a few steps
    recipe = type(recipe)(**{**recipe.__dict__, "options": {**recipe.options, "init_threshold": 0.5}})
    settings = {"steps": 6, "micro_batch": 4, "eval_every": 3, "val_metric": "loss",
                "gen_max_new_tokens": 8}
    run = train_student(recipe, tiny_model(len(tokenizer), seed=1), teacher, tokenizer, train, valid,
                        train_overrides=settings, teacher_cache=CacheOption(folder))
    steps = [h for h in run.summary["history"] if "source" in h]
    assert {h["source"] for h in steps} >= {"ground_truth", "student"}
    assert all(torch.isfinite(torch.tensor(h["loss"])) and "mgsr_dac" in h for h in steps)
    # no teacher forward on a ground-truth step (its rows are read from the cache); SCRG and the loss on samples
    assert all((h["teacher_tokens"] == 0) == (h["source"] == "ground_truth") for h in steps)
    assert run.config["teacher_cache"]["key"]["k"] == 16


def test_the_completion_never_outranks_a_cached_id():
    ids = torch.tensor([[3, 1]])
    for renormalize in (False, True):  # a cached id far below exp(-80), and a rest at its floor
        cache = D.TopK(ids, torch.tensor([[0.0, -120.0]]), 1.0, renormalize)
        assert cache.as_logits(6).topk(2).indices.tolist() == [[3, 1]]
