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
tokens)``, so the chunked and naive paths give the same values and gradients (tested).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from mgsr_bench.data.collate import TokenBatch

TokenLoss = Callable[[torch.Tensor, torch.Tensor | None, TokenBatch], torch.Tensor]


def chunk_bounds(n: int, chunk_size: int, joined: torch.Tensor | None) -> list[tuple[int, int]]:
    """``(start, stop)`` chunks of at most ``chunk_size`` rows that never split a joined pair.

    A chunk ends early, by as many rows as needed, when its last row is joined to the next one
    (``joined[stop - 1]``, :attr:`TokenBatch.joined`); when the whole chunk is one joined run, it
    grows to the run's end instead.
    """
    bounds, start = [], 0
    flags = joined.tolist() if joined is not None else None
    while start < n:
        stop = min(start + chunk_size, n)
        if flags is not None and stop < n:
            cut = stop
            while cut > start and flags[cut - 1]:
                cut -= 1
            if cut > start:
                stop = cut
            else:
                while stop < n and flags[stop - 1]:
                    stop += 1
        bounds.append((start, stop))
        start = stop
    return bounds


def _chunk_loop(hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor | None,
                teacher_weight: torch.Tensor | None, tokens: TokenBatch, token_loss: TokenLoss, chunk_size: int,
                params: Sequence[torch.Tensor], need_grad: bool) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The summed loss and, when asked, its gradients for ``hidden``, ``weight`` and ``params``."""
    # ``params`` are the loss's own leaf parameters, used as they are by ``token_loss``.
    wanted = [need_grad and t.requires_grad for t in (hidden, weight, *params)]
    grads: list[torch.Tensor | None] = [torch.zeros_like(t) if want else None
                                        for t, want in zip((hidden, weight, *params), wanted)]
    # The losses are computed in float32 (float64 for float64 inputs); so is their sum.
    total = torch.zeros((), dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32,
                        device=hidden.device)
    w = weight.detach().requires_grad_(wanted[1])
    leaves = [p for p, want in zip(params, wanted[2:]) if want]
    for start, stop in chunk_bounds(hidden.shape[0], chunk_size, tokens.joined):
        h = hidden[start:stop].detach().requires_grad_(wanted[0])
        teacher_logits = None
        if teacher_hidden is not None:
            with torch.no_grad():
                teacher_logits = teacher_hidden[start:stop] @ teacher_weight.T
        with torch.enable_grad() if any(wanted) else torch.no_grad():
            loss = token_loss(h @ w.T, teacher_logits, tokens.slice(start, stop)).sum()
            targets = [t for t in (h, w) if t.requires_grad] + leaves
            found = list(torch.autograd.grad(loss, targets, allow_unused=True)) if loss.requires_grad else []
        for i, want in enumerate(wanted):
            if not want:
                continue
            g = found.pop(0) if found else None
            if g is None:
                continue
            if i == 0:
                grads[0][start:stop] = g
            else:
                grads[i] += g
        total += loss.detach().to(total.dtype)
    return total, grads


class _ChunkedLinearLoss(torch.autograd.Function):
    """Sum over tokens of ``token_loss(h W^T, h_t W_t^T, tokens)``; gradients collected in the forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor | None,
                teacher_weight: torch.Tensor | None, tokens: TokenBatch, token_loss: TokenLoss, chunk_size: int,
                *params: torch.Tensor) -> torch.Tensor:
        total, grads = _chunk_loop(hidden, weight, teacher_hidden, teacher_weight, tokens, token_loss, chunk_size,
                                   params, need_grad=True)
        ctx.save_for_backward(*[torch.empty(0) if g is None else g for g in grads])
        ctx.present = [g is not None for g in grads]
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        grads = [g * grad_output.to(g.dtype) if present else None
                 for g, present in zip(ctx.saved_tensors, ctx.present)]
        return grads[0], grads[1], None, None, None, None, None, *grads[2:]


def chunked_linear_loss(hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor | None,
                        teacher_weight: torch.Tensor | None, tokens: TokenBatch, token_loss: TokenLoss,
                        chunk_size: int = 1024, params: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Sum of ``token_loss`` over the N rows of ``hidden`` (N, H), chunked over tokens.

    ``weight`` is the student's output embedding (V, H) and ``teacher_weight`` the teacher's
    (V, H_t); pass them already sliced to the shared tokenizer's length when the models pad their
    vocabularies differently. ``params`` are further trainable tensors the loss uses (a method's
    own sub-network); their gradients are collected chunk by chunk too. Peak extra memory is that
    of one ``(chunk_size, V)`` chunk of logits for each model plus the method's intermediates on it.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if (teacher_hidden is None) != (teacher_weight is None):
        raise ValueError("teacher_hidden and teacher_weight go together")
    if not torch.is_grad_enabled():  # evaluation: same chunking, no gradients to collect
        return _chunk_loop(hidden, weight, teacher_hidden, teacher_weight, tokens, token_loss, chunk_size, params,
                           need_grad=False)[0]
    return _ChunkedLinearLoss.apply(hidden, weight, teacher_hidden, teacher_weight, tokens, token_loss, chunk_size,
                                    *params)
