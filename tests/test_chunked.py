import pytest
import torch

from mgsr_bench.data.collate import TokenBatch
from mgsr_bench.losses.chunked import chunk_bounds, chunked_linear_loss
from mgsr_bench.methods import get_method


@pytest.mark.parametrize("method_name", ["sft", "kd", "jsd", "tvd", "srkl"])
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 100])
def test_chunked_equals_naive_values_and_gradients(method_name, chunk_size):
    torch.manual_seed(0)
    n, h, ht, v = 16, 8, 12, 37
    proj = torch.randn(5, h, dtype=torch.float64, requires_grad=True)  # upstream op: chain rule
    x = torch.randn(n, 5, dtype=torch.float64)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    t_hidden, t_weight = torch.randn(n, ht, dtype=torch.float64), torch.randn(v, ht, dtype=torch.float64)
    targets = TokenBatch(torch.randint(0, v, (n,)))
    method = get_method(method_name)
    teacher_logits = t_hidden @ t_weight.T

    naive = method.token_losses((x @ proj) @ weight.T, teacher_logits, targets).sum() * 0.37
    g_naive = torch.autograd.grad(naive, (proj, weight))
    chunked = chunked_linear_loss(x @ proj, weight, t_hidden, t_weight, targets, method.token_losses,
                                  chunk_size) * 0.37
    g_chunked = torch.autograd.grad(chunked, (proj, weight))
    torch.testing.assert_close(chunked, naive)
    for a, b in zip(g_chunked, g_naive):
        torch.testing.assert_close(a, b)


def test_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_linear_loss(x, torch.zeros(4, 3), None, None, TokenBatch(torch.zeros(2, dtype=torch.long)),
                            get_method("sft").token_losses, 0)
    with pytest.raises(ValueError, match="go together"):
        chunked_linear_loss(x, torch.zeros(4, 3), x, None, TokenBatch(torch.zeros(2, dtype=torch.long)),
                            get_method("sft").token_losses, 1)


def test_chunks_never_split_a_linked_pair():
    link = torch.tensor([False, True, True, False, True, False, False, True, False])
    bounds = chunk_bounds(9, 3, link)
    assert bounds[0][0] == 0 and bounds[-1][1] == 9
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    for start, stop in bounds:
        assert stop - start <= 3
        assert stop == 9 or not link[stop - 1]
    # a linked run longer than the chunk is kept whole: the chunk grows to its end
    assert chunk_bounds(5, 2, torch.tensor([True, True, True, False, False])) == [(0, 4), (4, 5)]


def test_chunked_collects_gradients_of_the_loss_own_parameters():
    torch.manual_seed(0)
    n, h, v = 10, 6, 11
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    scale = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
    tokens = TokenBatch(torch.randint(0, v, (n,)))

    def loss(student_logits, teacher_logits, tb):
        return torch.nn.functional.cross_entropy(student_logits * scale, tb.targets, reduction="none")

    naive = loss(hidden @ weight.T, None, tokens).sum()
    expected = torch.autograd.grad(naive, (hidden, weight, scale))
    chunked = chunked_linear_loss(hidden, weight, None, None, tokens, loss, 3, params=[scale])
    chunked.backward()
    torch.testing.assert_close(chunked, naive)
    for got, want in zip((hidden.grad, weight.grad, scale.grad), expected):
        torch.testing.assert_close(got, want)
