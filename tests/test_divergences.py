"""Each divergence against a straightforward probability-space implementation (float64), the
convention identities, and the basic properties."""

import pytest
import torch

from mgsr_bench.losses.divergences import (alpha_beta_divergence, forward_kl, generalized_jsd, jsd_terms, reverse_kl,
                                           skew_forward_kl, skew_reverse_kl, symmetric_kl, total_variation)


def _kl(a, b):
    return (a * torch.log(a / b)).sum(-1)


def _probs(s, t, tau=1.0):
    return torch.softmax(t / tau, -1), torch.softmax(s / tau, -1)


def ref_rkl(s, t, tau):
    p, q = _probs(s, t, tau)
    return _kl(q, p)


def ref_jsd(s, t, beta, tau):
    p, q = _probs(s, t, tau)
    m = beta * p + (1 - beta) * q
    return beta * _kl(p, m) + (1 - beta) * _kl(q, m)


def ref_tvd(s, t, tau):
    p, q = _probs(s, t, tau)
    return 0.5 * (p - q).abs().sum(-1)


def ref_sfkl(s, t, a, tau):
    p, q = _probs(s, t, tau)
    return _kl(p, a * p + (1 - a) * q)


def ref_srkl(s, t, a, tau):
    p, q = _probs(s, t, tau)
    return _kl(q, (1 - a) * p + a * q)


def ref_ab(s, t, a, b, tau):
    p, q = _probs(s, t, tau)
    return -(p ** a * q ** b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)).sum(-1) / (a * b)


CASES = [
    (lambda s, t, tau: reverse_kl(s, t, tau), ref_rkl),
    (lambda s, t, tau: generalized_jsd(s, t, 0.3, tau), lambda s, t, tau: ref_jsd(s, t, 0.3, tau)),
    (lambda s, t, tau: generalized_jsd(s, t, 0.5, tau), lambda s, t, tau: ref_jsd(s, t, 0.5, tau)),
    (lambda s, t, tau: total_variation(s, t, tau), ref_tvd),
    (lambda s, t, tau: skew_forward_kl(s, t, 0.1, tau), lambda s, t, tau: ref_sfkl(s, t, 0.1, tau)),
    (lambda s, t, tau: skew_reverse_kl(s, t, 0.1, tau), lambda s, t, tau: ref_srkl(s, t, 0.1, tau)),
    (lambda s, t, tau: symmetric_kl(s, t, 0.25, tau),
     lambda s, t, tau: 0.75 * _kl(*_probs(s, t, tau)) + 0.25 * ref_rkl(s, t, tau)),
    (lambda s, t, tau: alpha_beta_divergence(s, t, 0.5, 0.5, tau), lambda s, t, tau: ref_ab(s, t, 0.5, 0.5, tau)),
    (lambda s, t, tau: alpha_beta_divergence(s, t, 0.8, 0.4, tau), lambda s, t, tau: ref_ab(s, t, 0.8, 0.4, tau)),
]


@pytest.mark.parametrize("ours,ref", CASES)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_values_and_gradients_match_reference(ours, ref, tau):
    torch.manual_seed(0)
    s = torch.randn(6, 13, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 13, dtype=torch.float64)
    a, b = ours(s, t, tau), ref(s, t, tau)
    torch.testing.assert_close(a, b)
    ga, = torch.autograd.grad(a.sum(), s)
    gb, = torch.autograd.grad(b.sum(), s)
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("ours,ref", CASES)
def test_non_negative_and_zero_at_equality(ours, ref):
    t = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(ours(t.clone(), t, 1.0), torch.zeros(5, dtype=torch.float64))
    assert (ours(torch.randn(5, 9, dtype=torch.float64), t, 1.0) > 0).all()


def test_convention_identities():
    s, t = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), forward_kl(s, t))
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), reverse_kl(s, t))
    torch.testing.assert_close(skew_forward_kl(s, t, 0.0), forward_kl(s, t))
    torch.testing.assert_close(skew_reverse_kl(s, t, 0.0), reverse_kl(s, t))
    torch.testing.assert_close(alpha_beta_divergence(s, t, 1.0, 0.0), forward_kl(s, t))
    torch.testing.assert_close(alpha_beta_divergence(s, t, 0.0, 1.0), reverse_kl(s, t))
    # alpha = beta = 0.5 is four times the squared Hellinger distance.
    p, q = _probs(s, t)
    torch.testing.assert_close(alpha_beta_divergence(s, t, 0.5, 0.5), 2 * ((p.sqrt() - q.sqrt()) ** 2).sum(-1))


def test_distillm_js_distance_equals_trl_jsd_with_beta_one_minus_lambda():
    """DistiLLM's js_distance(lam): M = (1 - lam) p + lam q, loss = lam KL(q||M) + (1 - lam) KL(p||M)."""
    s, t = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    p, q = _probs(s, t)
    for lam in (0.1, 0.5, 0.9):
        m = (1 - lam) * p + lam * q
        distillm = lam * _kl(q, m) + (1 - lam) * _kl(p, m)
        torch.testing.assert_close(generalized_jsd(s, t, beta=1 - lam), distillm)
    # Reading DistiLLM's lam = 0.9 as TRL's beta = 0.9 (the inverted convention) is a different loss.
    m = 0.1 * p + 0.9 * q
    assert not torch.allclose(generalized_jsd(s, t, beta=0.9), 0.9 * _kl(q, m) + 0.1 * _kl(p, m))


def test_out_of_range_parameters_are_refused():
    s = t = torch.zeros(1, 3)
    for fn in (lambda: generalized_jsd(s, t, 1.5), lambda: skew_forward_kl(s, t, 1.0),
               lambda: skew_reverse_kl(s, t, -0.1), lambda: symmetric_kl(s, t, 2.0),
               lambda: alpha_beta_divergence(s, t, 0.5, -0.5)):
        with pytest.raises(ValueError):
            fn()


def test_jsd_terms_are_the_two_halves_of_the_jsd():
    torch.manual_seed(3)
    s, t = torch.randn(5, 9, dtype=torch.float64), torch.randn(5, 9, dtype=torch.float64)
    p, q = _probs(s, t)
    m = 0.3 * p + 0.7 * q
    kl_p, kl_q = jsd_terms(s, t, 0.3)
    torch.testing.assert_close(kl_p, _kl(p, m))
    torch.testing.assert_close(kl_q, _kl(q, m))
    torch.testing.assert_close(0.3 * kl_p + 0.7 * kl_q, generalized_jsd(s, t, 0.3))
