"""Divergences between teacher and student next-token distributions.

Conventions used throughout mgsr-bench:

* ``p`` is the teacher distribution, ``q`` the student's, both ``softmax(logits / tau)`` over the
  full vocabulary, computed in log space in float32 (or higher when the inputs are float64).
* Every function takes logits of shape ``(N, V)`` for the N selected response positions and
  returns a tensor of shape ``(N,)``: one value per token. Reduction (the token mean over the
  global batch) belongs to the training harness, so that every method is reduced identically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return F.log_softmax(logits.to(dtype) / temperature, dim=-1)


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the target tokens: ``-log q(y_t)`` per token (the SFT loss)."""
    return -_log_probs(student_logits, 1.0).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Exact forward KL, ``KL(p || q) = sum_v p(v) (log p(v) - log q(v))``, per token.

    Convention: the exact KL, as TRL and DistillKit compute it; zero when student equals teacher.
    DistiLLM, MiniLLM and torchtune minimise the cross-entropy ``-sum_v p(v) log q(v)`` instead,
    which is this value plus the teacher entropy H(p): a constant for the student, so the
    gradients are identical. No ``tau**2`` factor is applied.
    """
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits, temperature)
    return (log_p.exp() * (log_p - log_q)).sum(-1)
