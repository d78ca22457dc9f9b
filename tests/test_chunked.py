import pytest
import torch

from mgsr_bench.losses.chunked import chunked_linear_loss
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
    targets = torch.randint(0, v, (n,))
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
        chunked_linear_loss(x, torch.zeros(4, 3), None, None, torch.zeros(2, dtype=torch.long),
                            get_method("sft").token_losses, 0)
    with pytest.raises(ValueError, match="go together"):
        chunked_linear_loss(x, torch.zeros(4, 3), x, None, torch.zeros(2, dtype=torch.long),
                            get_method("sft").token_losses, 1)
