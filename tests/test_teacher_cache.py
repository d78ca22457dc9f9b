"""Cached top-k teacher distributions: every divergence on a :class:`TopK` teacher, in both
conventions for the rest, equals the exact divergence when k is the vocabulary."""

from __future__ import annotations

import functools

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
