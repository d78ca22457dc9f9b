"""Divergences between teacher and student next-token distributions.

Conventions used throughout mgsr-bench:

* ``p`` is the teacher distribution, ``q`` the student's, both ``softmax(logits / tau)`` over the
  full vocabulary, computed in log space in float32 (or higher when the inputs are float64).
* Every function takes logits of shape ``(N, V)`` for the N selected response positions and
  returns a tensor of shape ``(N,)``: one value per token. Reduction (the token mean over the
  global batch) belongs to the training harness, so that every method is reduced identically.
* The teacher may instead be a :class:`TopK`: its k most likely tokens per position, as a cache
  holds them (:mod:`mgsr_bench.teacher_cache`). Every divergence is then taken between two
  distributions over the same k + 1 outcomes: the teacher's k tokens, and one "rest" bucket holding
  the remaining mass (the default; both are proper distributions, and the student's mass outside
  the teacher's k tokens is penalised), or the k tokens renormalised (``renormalize``; the rest is
  dropped on both sides). The student is reduced to the teacher's k ids in the same way. With k
  equal to the vocabulary both equal the exact divergence (tested for each). A loss that reads the
  teacher per vocabulary id (MGSR's band, target and span products) reads :meth:`TopK.as_logits`,
  the rest spread evenly over the ids outside the k.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class TopK:
    """A teacher distribution kept as its ``k`` most likely tokens per position: ``ids`` and
    ``logprobs``, both ``(N, k)``, the log-probabilities at ``temperature`` over the full
    vocabulary; ``renormalize`` chooses the convention for the rest (module docstring)."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    temperature: float = 1.0
    renormalize: bool = False

    def slice(self, start: int, stop: int) -> "TopK":
        return dataclasses.replace(self, ids=self.ids[start:stop], logprobs=self.logprobs[start:stop])

    def as_logits(self, vocab_size: int) -> torch.Tensor:
        """``(N, V)`` logits whose softmax at ``temperature`` is the full distribution the k ids stand for,
        for losses that read the teacher per vocabulary id rather than through a divergence (MGSR's):
        the k ids' probabilities, and the rest's mass spread evenly over the other ``V - k`` ids (the
        most entropic completion; ``renormalize``: the k ids renormalised, the others ``exp(-80)``).
        Equal to the teacher's distribution when k = V. Returned as ``temperature * log p``."""
        k = self.ids.shape[-1]
        log_top = self.logprobs.to(torch.float64 if self.logprobs.dtype == torch.float64 else torch.float32)
        if self.renormalize or k == vocab_size:
            fill = torch.full_like(log_top[:, :1], _EMPTY)
        else:  # an average of the rest: never above the k-th probability, so the ranks stay the cache's
            fill = _with_rest(log_top)[:, -1:] - math.log(vocab_size - k)
        # except a rest at its floor, exp(-80): below the lowest cached id, whose log-probability can be lower
        lowest = log_top.min(-1, keepdim=True).values
        fill = torch.where(fill > lowest, lowest - 30.0, fill)
        log_p = fill.expand(-1, vocab_size).scatter(-1, self.ids.long(), log_top)
        return self.temperature * log_p


Teacher = torch.Tensor | TopK  # logits (N, V), or a cached top-k distribution

# The log-mass of a rest bucket that is empty (k = V, or the top k hold all of it in float precision):
# small enough to add nothing to any sum, large enough that 0 * log(0) never turns into NaN.
_EMPTY = -80.0


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return F.log_softmax(logits.to(dtype) / temperature, dim=-1)


def _with_rest(log_top: torch.Tensor) -> torch.Tensor:
    """``(N, k)`` log-probabilities and one more column, the log of the mass they leave."""
    rest = torch.log((-torch.expm1(torch.logsumexp(log_top, -1, keepdim=True))).clamp_min(math.exp(_EMPTY)))
    return torch.cat([log_top, rest], dim=-1)


def check_temperature(teacher: TopK, temperature: float) -> None:
    """A cached distribution is read only at the temperature it was written at."""
    if not math.isclose(teacher.temperature, temperature):
        raise ValueError(f"the cached teacher distribution is at temperature {teacher.temperature}, the loss asks "
                         f"for {temperature}: write the cache at the method's temperature")


def log_prob_pair(student_logits: torch.Tensor, teacher: Teacher,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log q, log p)`` over the outcomes a divergence sums over: the vocabulary for teacher
    logits; for a :class:`TopK` teacher, its k ids plus the rest bucket, or the k ids renormalised."""
    log_q = _log_probs(student_logits, temperature)
    if not isinstance(teacher, TopK):
        return log_q, _log_probs(teacher, temperature)
    check_temperature(teacher, temperature)
    whole = teacher.ids.shape[-1] == log_q.shape[-1]  # k = V: nothing is left for a rest bucket
    log_q = log_q.gather(-1, teacher.ids.long())
    log_p = teacher.logprobs.to(log_q.dtype)
    if whole:
        return log_q, log_p
    if teacher.renormalize:
        return log_q - torch.logsumexp(log_q, -1, keepdim=True), log_p - torch.logsumexp(log_p, -1, keepdim=True)
    return _with_rest(log_q), _with_rest(log_p)


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the target tokens: ``-log q(y_t)`` per token (the SFT loss)."""
    return -_log_probs(student_logits, 1.0).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float = 1.0,
               cross_entropy_form: bool = False) -> torch.Tensor:
    """Exact forward KL, ``KL(p || q) = sum_v p(v) (log p(v) - log q(v))``, per token.

    Convention: the exact KL, as TRL and DistillKit compute it; zero when student equals teacher.
    DistiLLM, MiniLLM and torchtune minimise the cross-entropy ``-sum_v p(v) log q(v)`` instead
    (``cross_entropy_form=True``), which is this value plus the teacher entropy H(p): a constant
    for the student, so the gradients are identical. No ``tau**2`` factor is applied.
    """
    log_q, log_p = log_prob_pair(student_logits, teacher_logits, temperature)
    if cross_entropy_form:
        return -(log_p.exp() * log_q).sum(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL, ``KL(q || p) = sum_v q(v) (log q(v) - log p(v))``, per token (mode-seeking).

    Convention: the same in MiniLLM, DistiLLM, TRL (``beta = 1`` of its generalized JSD) and DistillKit.
    """
    log_q, log_p = log_prob_pair(student_logits, teacher_logits, temperature)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: Teacher, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence in TRL's convention (``GKDTrainer``), per token.

    ``M = beta * p + (1 - beta) * q`` and ``JSD_beta = beta * KL(p || M) + (1 - beta) * KL(q || M)``.
    As TRL does, the endpoints are defined as the KL limits: ``beta = 0`` gives ``KL(p || q)``
    (forward) and ``beta = 1`` gives ``KL(q || p)`` (reverse); ``beta = 0.5`` is the symmetric JSD.
    DistiLLM's ``js_distance`` with mixing weight ``lam`` weights the *student* by ``lam`` in M,
    so it equals this function with ``beta = 1 - lam`` (see docs/divergences.md).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature)
    kl_p, kl_q = jsd_terms(student_logits, teacher_logits, beta, temperature)
    return beta * kl_p + (1 - beta) * kl_q


def jsd_terms(student_logits: torch.Tensor, teacher_logits: Teacher, beta: float = 0.5,
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of :func:`generalized_jsd`: ``(KL(p || M), KL(q || M))``, ``M = beta p + (1 - beta) q``.

    f-distill's JS estimator takes the first on teacher samples and the second on student samples.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    log_q, log_p = log_prob_pair(student_logits, teacher_logits, temperature)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    return (log_p.exp() * (log_p - log_m)).sum(-1), (log_q.exp() * (log_q - log_m)).sum(-1)


def total_variation(student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float = 1.0) -> torch.Tensor:
    """Total variation distance, ``0.5 * sum_v |p(v) - q(v)|``, per token (in [0, 1]).

    Convention: DistiLLM's ``tv_distance`` and f-distill's TVD, computed in probability space;
    symmetric in p and q.
    """
    log_q, log_p = log_prob_pair(student_logits, teacher_logits, temperature)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def skew_forward_kl(student_logits: torch.Tensor, teacher_logits: Teacher, alpha: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew forward KL, the exact ``KL(p || alpha * p + (1 - alpha) * q)``, per token.

    Convention: DistiLLM's ``skewed_forward_kl(lam=alpha)`` (alpha = 0.1 there) minimises the
    cross-entropy form ``-sum_v p(v) log(alpha p(v) + (1 - alpha) q(v))``, which is this value plus
    the teacher entropy H(p): the same gradients, another reported value. ``alpha = 0`` is the
    forward KL; the mixture keeps the gradient bounded where q is tiny.
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    log_q, log_p = log_prob_pair(student_logits, teacher_logits, temperature)
    log_mix = log_q if alpha == 0 else torch.logaddexp(log_p + math.log(alpha), log_q + math.log(1 - alpha))
    return (log_p.exp() * (log_p - log_mix)).sum(-1)


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: Teacher, alpha: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """DistiLLM's skew reverse KL, ``KL(q || (1 - alpha) * p + alpha * q)``, per token.

    ``alpha = 0`` is the reverse KL.
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    log_q, log_p = log_prob_pair(student_logits, teacher_logits, temperature)
    log_mix = log_p if alpha == 0 else torch.logaddexp(log_p + math.log(1 - alpha), log_q + math.log(alpha))
    return (log_q.exp() * (log_q - log_mix)).sum(-1)


def symmetric_kl(student_logits: torch.Tensor, teacher_logits: Teacher, weight: float = 0.5,
                 temperature: float = 1.0) -> torch.Tensor:
    """Mix of the two KLs, ``(1 - weight) * KL(p || q) + weight * KL(q || p)``, per token.

    Convention: both KLs exact. DistiLLM's ``symmetric_kl(lam=weight)`` takes the forward term in
    its cross-entropy form, which adds the constant ``(1 - weight) * H(p)``: the same gradients.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return ((1 - weight) * forward_kl(student_logits, teacher_logits, temperature)
            + weight * reverse_kl(student_logits, teacher_logits, temperature))


def alpha_beta_divergence(student_logits: torch.Tensor, teacher_logits: Teacher, alpha: float = 0.5,
                          beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """The alpha-beta divergence of ABKD (Wang et al., ICML 2025), per token.

    ``D_AB(p || q) = -1 / (alpha * beta) * sum_v [p^alpha q^beta - alpha / (alpha + beta) p^(alpha+beta)
    - beta / (alpha + beta) q^(alpha+beta)]`` for ``alpha, beta, alpha + beta != 0``. Its limits
    ``(alpha, beta) = (1, 0)`` and ``(0, 1)`` are the forward and reverse KL and are returned as such;
    ``alpha = beta = 0.5`` is four times the squared Hellinger distance. Powers are taken in log space.
    """
    if (alpha, beta) == (1.0, 0.0):
        return forward_kl(student_logits, teacher_logits, temperature)
    if (alpha, beta) == (0.0, 1.0):
        return reverse_kl(student_logits, teacher_logits, temperature)
    if alpha == 0 or beta == 0 or alpha + beta == 0:
        raise ValueError(f"alpha-beta divergence needs alpha, beta, alpha + beta != 0 "
                         f"(or the KL limits (1, 0), (0, 1)); got ({alpha}, {beta})")
    log_q, log_p = log_prob_pair(student_logits, teacher_logits, temperature)
    s = alpha + beta
    terms = ((alpha * log_p + beta * log_q).exp() - alpha / s * (s * log_p).exp() - beta / s * (s * log_q).exp())
    return -terms.sum(-1) / (alpha * beta)
