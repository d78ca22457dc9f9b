"""MGSR's span-level loss: keep the correlation between adjacent tokens of a span consistent.

For each pair of adjacent response positions (i, i + 1) inside one span (MGSR spec section 3):

* ``hadamard`` (default): correlation vectors ``r = p_i * p_{i+1}`` (element-wise product over the
  vocabulary) for the teacher and the same for the student, restricted to the support ``S`` = the
  ``top_k`` ids of the *teacher's* product; the pair's loss is ``sum_{v in S} (r_t(v) - r_s(v))^2``;
* ``cosine``: the scalar cosine similarity of ``p_i`` and ``p_{i+1}`` for each model; the pair's loss
  is the squared difference of the two.

``L_span`` is the mean over pairs (MGSR's ``pair_scale``, response tokens per pair in the global
batch, turns the per-token sum into that mean). Both are zero when the student equals the teacher
and positive otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RELATIONS = ("hadamard", "cosine")


def span_pair_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, link: torch.Tensor | None,
                     top_k: int = 64, relation: str = "hadamard", temperature: float = 1.0) -> torch.Tensor:
    """Per-position loss ``(N,)``: the loss of pair (n, n + 1) at each n with ``link[n]``, 0 elsewhere.

    ``hadamard``: ``sum_{v in S} (p_n(v) p_{n+1}(v) - q_n(v) q_{n+1}(v))^2`` over ``S``, the ``top_k``
    ids of the teacher's product; ``cosine``: ``(cos(p_n, p_{n+1}) - cos(q_n, q_{n+1}))^2``; ``p``
    the teacher's distribution (no gradient), ``q`` the student's (module docstring).
    """
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {', '.join(RELATIONS)}, got {relation!r}")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    out = torch.zeros(student_logits.shape[0], dtype=dtype, device=student_logits.device)
    if link is None or not link.any():
        return out + 0 * student_logits.sum()  # keeps the graph connected for autograd.grad
    first = link.nonzero().squeeze(-1)
    second = first + 1
    q = F.softmax(student_logits.to(dtype) / temperature, dim=-1)
    with torch.no_grad():
        p = F.softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if relation == "hadamard":
        r_t = p[first] * p[second]
        support = r_t.topk(min(top_k, r_t.shape[-1]), dim=-1).indices
        r_s = q[first].gather(-1, support) * q[second].gather(-1, support)
        pair = (r_t.gather(-1, support) - r_s).pow(2).sum(-1)
    else:
        cos_t = F.cosine_similarity(p[first], p[second], dim=-1)
        cos_s = F.cosine_similarity(q[first], q[second], dim=-1)
        pair = (cos_t - cos_s).pow(2)
    return out.index_put((first,), pair)
