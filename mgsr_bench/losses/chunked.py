"""Chunked distillation loss that never holds more than one chunk of full-vocabulary logits.

The naive path materialises student and teacher logits for every response token, ``(N, V)`` each,
plus their softmax intermediates and gradients: at N = 8 x 512 tokens and V = 50257 that is
several GB in float32. Here the language-model heads are applied to one chunk of ``chunk_size``
tokens at a time. For each chunk the loss and its gradients with respect to the student's hidden
states and head weight are computed immediately (``torch.autograd.grad``), the chunk's logits are
freed, and the gradients are accumulated. The backward pass of the returned scalar then only scales
the stored gradients: no logits are recomputed or kept. This is the pattern of Liger Kernel's
fused-linear distillation losses, in plain torch so that it runs on CPU and GPU alike.

The token losses are those of any method's ``token_losses(student_logits, teacher_logits,
targets)``, so the chunked and naive paths give the same values and gradients (tested).
"""

from __future__ import annotations

from typing import Callable

import torch

TokenLoss = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def _chunk_loop(hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor | None,
                teacher_weight: torch.Tensor | None, targets: torch.Tensor, token_loss: TokenLoss, chunk_size: int,
                need_hidden: bool, need_weight: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The summed loss and, as asked, its gradients for ``hidden`` and ``weight``, chunk by chunk."""
    grad_hidden = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight) if need_weight else None
    # The losses are computed in float32 (float64 for float64 inputs); so is their sum.
    total = torch.zeros((), dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32,
                        device=hidden.device)
    w = weight.detach().requires_grad_(need_weight)
    for start in range(0, hidden.shape[0], chunk_size):
        stop = start + chunk_size
        h = hidden[start:stop].detach().requires_grad_(need_hidden)
        teacher_logits = None
        if teacher_hidden is not None:
            with torch.no_grad():
                teacher_logits = teacher_hidden[start:stop] @ teacher_weight.T
        with torch.enable_grad() if (need_hidden or need_weight) else torch.no_grad():
            loss = token_loss(h @ w.T, teacher_logits, targets[start:stop]).sum()
            grads = list(torch.autograd.grad(loss, [t for t in (h, w) if t.requires_grad])) if loss.requires_grad else []
        if grad_hidden is not None:
            grad_hidden[start:stop] = grads.pop(0)
        if grad_weight is not None:
            grad_weight += grads.pop(0)
        total += loss.detach().to(total.dtype)
    return total, grad_hidden, grad_weight


class _ChunkedLinearLoss(torch.autograd.Function):
    """Sum over tokens of ``token_loss(h W^T, h_t W_t^T, y)``; gradients collected in the forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor | None,
                teacher_weight: torch.Tensor | None, targets: torch.Tensor, token_loss: TokenLoss,
                chunk_size: int) -> torch.Tensor:
        total, grad_hidden, grad_weight = _chunk_loop(hidden, weight, teacher_hidden, teacher_weight, targets,
                                                      token_loss, chunk_size, hidden.requires_grad,
                                                      weight.requires_grad)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_output.to(g.dtype)  # noqa: E731
        return scale(grad_hidden), scale(grad_weight), None, None, None, None, None


def chunked_linear_loss(hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor | None,
                        teacher_weight: torch.Tensor | None, targets: torch.Tensor, token_loss: TokenLoss,
                        chunk_size: int = 1024) -> torch.Tensor:
    """Sum of ``token_loss`` over the N rows of ``hidden`` (N, H), chunked over tokens.

    ``weight`` is the student's output embedding (V, H) and ``teacher_weight`` the teacher's
    (V, H_t); pass them already sliced to the shared tokenizer's length when the models pad their
    vocabularies differently. Peak extra memory is that of one ``(chunk_size, V)`` chunk of
    logits for each model plus the method's intermediates on it.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if (teacher_hidden is None) != (teacher_weight is None):
        raise ValueError("teacher_hidden and teacher_weight go together")
    if not torch.is_grad_enabled():  # evaluation: same chunking, no gradients to collect
        return _chunk_loop(hidden, weight, teacher_hidden, teacher_weight, targets, token_loss, chunk_size,
                           need_hidden=False, need_weight=False)[0]
    return _ChunkedLinearLoss.apply(hidden, weight, teacher_hidden, teacher_weight, targets, token_loss, chunk_size)
