import torch

from mgsr_bench.losses import cross_entropy, forward_kl


def _reference_kl(s, t, tau):
    """Straightforward probability-space KL(p || q), independent of the implementation."""
    p = torch.softmax(t / tau, -1)
    q = torch.softmax(s / tau, -1)
    return (p * torch.log(p / q)).sum(-1)


def test_forward_kl_matches_reference_values_and_gradients():
    torch.manual_seed(0)
    for tau in (1.0, 2.0):
        s = torch.randn(7, 11, dtype=torch.float64, requires_grad=True)
        t = torch.randn(7, 11, dtype=torch.float64)
        ours = forward_kl(s, t, tau)
        ref = _reference_kl(s, t, tau)
        torch.testing.assert_close(ours, ref)
        g1, = torch.autograd.grad(ours.sum(), s)
        g2, = torch.autograd.grad(ref.sum(), s)
        torch.testing.assert_close(g1, g2)


def test_forward_kl_is_zero_at_equality_and_positive_otherwise():
    t = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(forward_kl(t.clone(), t), torch.zeros(5, dtype=torch.float64))
    assert (forward_kl(torch.randn(5, 9, dtype=torch.float64), t) > 0).all()


def test_cross_entropy_form_differs_by_teacher_entropy():
    """DistiLLM/torchtune minimise -sum p log q; that is KL(p||q) + H(p), with the same gradient."""
    s = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 6, dtype=torch.float64)
    p = torch.softmax(t, -1)
    ce_form = -(p * torch.log_softmax(s, -1)).sum(-1)
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(ce_form - forward_kl(s, t), entropy)


def test_cross_entropy_matches_torch():
    s = torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    torch.testing.assert_close(cross_entropy(s, y), torch.nn.functional.cross_entropy(s, y, reduction="none"))


def test_half_precision_logits_are_upcast():
    s, t = torch.randn(3, 8).bfloat16(), torch.randn(3, 8).bfloat16()
    assert forward_kl(s, t).dtype == torch.float32
