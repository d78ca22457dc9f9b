"""DAC-KL, MGSR's token-level loss: KL on an adaptively clipped band of the teacher's distribution.

Per response position (teacher ``p``, student ``q``; MGSR spec section 2):

1. the teacher's top ``K_max`` ranks ``p_(1) >= p_(2) >= ...`` with ids ``pi(k)`` and the mass before
   each rank ``C_k = sum_{r<k} p_(r)`` (the tail beyond ``K_max`` is always clipped);
2. a target class ``g`` that always keeps its own entry;
3. band bounds ``0 < l < u < 1`` in cumulative-mass space, from the sub-network :class:`BandNet`
   (or constants in ``fixed`` mode);
4. soft membership of rank k (g excluded): ``w_k = sigmoid((C_k + p_(k) - l) / s) * sigmoid((u - C_k) / s)``,
   i.e. rank k is in the band when its interval ``[C_k, C_k + p_(k)]`` overlaps ``[l, u]``;
5. ``P = [w_k p_(k)]_k ++ [p_g]``, ``Q = [w_k q_pi(k)]_k ++ [q_g]``, each renormalised to sum 1;
   with ``outside="bucket"`` (a project ablation, not the paper's) both first get one more entry
   holding the mass outside the band and the target, ``P_out = 1 - sum(P)``, ``Q_out = 1 - sum(Q)``
   (before renormalising): then P and Q are distributions already, and the student's mass outside
   the band is penalised instead of renormalised away (``"drop"``, the default);
6. ``L_DAC = KL(P || Q) = sum_j P_j (log P_j - log Q_j)`` per token (the exact KL, teacher first, as
   the project's forward KL; without renormalisation the generalised KL
   ``sum P log(P / Q) - sum P + sum Q``, still >= 0 and 0 at P = Q).

Everything is computed in log space in float32 (float64 for float64 inputs), on ``(N, V)`` logits
of one chunk of tokens, so it chunks over tokens like every other loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OUTSIDE = ("drop", "bucket")  # what DAC-KL does with the mass outside the band and the target (step 5)


class BandNet(torch.nn.Module):
    """MGSR's sub-network f_phi: teacher top-``n_probs`` sorted probabilities + entropy -> band ``(l, u)``.

    ``n_probs + 1 -> hidden -> 2`` with GELU (spec: 64 probabilities + entropy -> 64 -> 2). Outputs ``u = sigmoid(a)`` and
    ``l = u * sigmoid(b)``, so ``0 < l < u < 1`` by construction.
    """

    def __init__(self, n_probs: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.n_probs = n_probs
        self.net = torch.nn.Sequential(torch.nn.Linear(n_probs + 1, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, 2))

    def forward(self, sorted_probs: torch.Tensor, entropy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = sorted_probs[:, : self.n_probs]
        if head.shape[1] < self.n_probs:  # vocabularies smaller than n_probs: pad with zero mass
            head = F.pad(head, (0, self.n_probs - head.shape[1]))
        weight = self.net[0].weight
        a, b = self.net(torch.cat([head, entropy.unsqueeze(-1)], dim=-1).to(weight.dtype)).unbind(-1)
        upper = torch.sigmoid(a)
        return upper * torch.sigmoid(b), upper


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, negated gradient backward (the adversarial sub-network ascends the loss)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    return _ReverseGradient.apply(x)


def teacher_head(teacher_logits: torch.Tensor, top_k: int, temperature: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log_p, sorted top-k probabilities, their ids, entropy)`` of the teacher, in float32 or higher."""
    dtype = torch.float64 if teacher_logits.dtype == torch.float64 else torch.float32
    log_p = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    top, ids = log_p.topk(min(top_k, log_p.shape[-1]), dim=-1)  # sorted, descending
    entropy = -(log_p.exp() * log_p).sum(-1)
    return log_p, top.exp(), ids, entropy


def band_log_weights(sorted_probs: torch.Tensor, ids: torch.Tensor, target: torch.Tensor, lower: torch.Tensor,
                     upper: torch.Tensor, sharpness: float = 0.02) -> torch.Tensor:
    """``log w_k`` per rank, ``(N, K)``; ``-inf`` at the target's own rank (it keeps its own entry instead).

    ``w_k = sigmoid((C_k + p_(k) - l) / s) * sigmoid((u - C_k) / s)`` with ``C_k`` the mass before
    rank k and ``s`` the sharpness (module docstring, step 4), taken as a sum of log-sigmoids.
    """
    cum_before = sorted_probs.cumsum(-1) - sorted_probs
    lower = lower.to(sorted_probs.dtype).reshape(-1, 1)
    upper = upper.to(sorted_probs.dtype).reshape(-1, 1)
    log_w = (F.logsigmoid((cum_before + sorted_probs - lower) / sharpness)
             + F.logsigmoid((upper - cum_before) / sharpness))
    return log_w.masked_fill(ids == target.unsqueeze(-1), float("-inf"))


def kept_mass(log_p: torch.Tensor, sorted_probs: torch.Tensor, ids: torch.Tensor, target: torch.Tensor,
              lower: torch.Tensor, upper: torch.Tensor, sharpness: float = 0.02) -> torch.Tensor:
    """``M_kept = sum_k w_k p_(k) + p_g`` per token: the teacher mass the band and the target keep."""
    log_w = band_log_weights(sorted_probs, ids, target, lower, upper, sharpness)
    return (log_w.exp() * sorted_probs).sum(-1) + log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1).exp()


def outside_log_mass(log_x: torch.Tensor, log_w: torch.Tensor, ids: torch.Tensor, target: torch.Tensor
                     ) -> torch.Tensor:
    """``log(1 - sum_k w_k x_pi(k) - x_g)`` per token, ``(N, 1)``: the mass of ``x`` outside the band
    and the target (the ``bucket`` entry of step 5).

    ``log_x`` is a full ``(N, V)`` log-distribution (teacher or student), ``log_w`` the band's log
    weights per rank (``-inf`` at the target's rank, :func:`band_log_weights`). The value is summed
    over what is left out, ``sum_k (1 - w_k) x_pi(k)`` over the ranks (g excluded) plus the mass
    beyond the ranks (g excluded), in log space: equal to one minus the kept mass, but exact when it
    is small (a student concentrated in the band), where ``1 - sum`` is rounding noise.
    """
    # log(1 - w_k); the clamp keeps a w_k rounded to 1 from giving log(0), whose gradient is NaN
    log_1m_w = torch.log(-torch.expm1(log_w.clamp(max=-torch.finfo(log_w.dtype).tiny)))
    is_target = ids == target.unsqueeze(-1)
    ranks = (log_1m_w + log_x.gather(-1, ids)).masked_fill(is_target, float("-inf"))
    beyond = log_x.scatter(-1, ids, float("-inf")).scatter(-1, target.unsqueeze(-1), float("-inf"))
    return torch.cat([ranks, beyond.logsumexp(-1, keepdim=True)], dim=-1).logsumexp(-1, keepdim=True)


def band_kl(log_p: torch.Tensor, log_q: torch.Tensor, log_w: torch.Tensor, ids: torch.Tensor, target: torch.Tensor,
            renormalize: bool = True, outside: str = "drop") -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 5-6 given the band: per-token ``KL(P || Q)`` and the teacher mass kept in ``P`` before
    renormalisation (``M_kept``, without the bucket), both ``(N,)``.

    ``P = [w_k p_(k)]_k ++ [p_g] (++ [1 - sum(P)] with outside="bucket")``, ``Q`` the same with
    ``q``; renormalised to sum 1 (a no-op with the bucket, up to rounding), then
    ``KL(P || Q) = sum_j P_j (log P_j - log Q_j)``, exact KL with the teacher first; with
    ``renormalize=False`` the generalised KL ``sum P log(P / Q) - sum P + sum Q``.
    ``log_p``, ``log_q``: full ``(N, V)`` log-distributions; ``log_w``: ``(N, K)`` log band weights
    per rank, ``-inf`` at the target's rank; ``ids``: the ranks' vocabulary ids; ``target``: g.
    """
    log_P = torch.cat([log_w + log_p.gather(-1, ids), log_p.gather(-1, target.unsqueeze(-1))], dim=-1)
    log_Q = torch.cat([log_w + log_q.gather(-1, ids), log_q.gather(-1, target.unsqueeze(-1))], dim=-1)
    kept = log_P.exp().sum(-1)
    if outside == "bucket":
        log_P = torch.cat([log_P, outside_log_mass(log_p, log_w, ids, target)], dim=-1)
        log_Q = torch.cat([log_Q, outside_log_mass(log_q, log_w, ids, target)], dim=-1)
    if renormalize:
        log_P = log_P - log_P.logsumexp(-1, keepdim=True)
        log_Q = log_Q - log_Q.logsumexp(-1, keepdim=True)
    P = log_P.exp()
    # Excluded entries have log P = log Q = -inf: their difference is set to 0 *before* the product,
    # so no NaN can reach the gradients.
    loss = (P * torch.where(P > 0, log_P - log_Q, torch.zeros_like(P))).sum(-1)
    if not renormalize:
        loss = loss - P.sum(-1) + log_Q.exp().sum(-1)
    return loss, kept


def dac_kl(student_logits: torch.Tensor, log_p: torch.Tensor, sorted_probs: torch.Tensor, ids: torch.Tensor,
           target: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, sharpness: float = 0.02,
           renormalize: bool = True, temperature: float = 1.0, outside: str = "drop"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token DAC-KL and the teacher mass kept in ``P`` (before renormalisation), both ``(N,)``.

    ``L_DAC = KL(P || Q) = sum_j P_j (log P_j - log Q_j)``, the exact KL with the teacher first, over
    ``P = [w_k p_(k)]_k ++ [p_g]`` and ``Q = [w_k q_pi(k)]_k ++ [q_g]`` each renormalised to sum 1;
    with ``outside="bucket"`` each also holds ``1 - sum`` of its entries (the mass outside the band
    and the target); with ``renormalize=False`` the generalised KL ``sum P log(P / Q) - sum P + sum Q``
    (module docstring, steps 5-6; :func:`band_kl`).
    ``log_p``, ``sorted_probs`` and ``ids`` come from :func:`teacher_head`; ``target`` holds the
    class g per token; ``lower``/``upper`` the band per token (any shape broadcasting to ``(N,)``).
    """
    log_q = F.log_softmax(student_logits.to(log_p.dtype) / temperature, dim=-1)
    log_w = band_log_weights(sorted_probs, ids, target, lower, upper, sharpness)
    return band_kl(log_p, log_q, log_w, ids, target, renormalize, outside)
