"""Where a model puts its probability, teacher-forced on reference responses.

ROUGE-L under the protocol's pure sampling punishes a student that spreads probability over tokens
its teacher rules out, even when its most likely token is right: every sampled token is a draw from
the whole distribution, and greedy decoding hides the spread. These token means show it directly.
They are taken where the training loss is (each response token of a reference, its final EOS
included, no prompt or padding position), with ``p`` the teacher's and ``q`` the model's next-token
distribution at temperature 1 over the shared tokenizer's vocabulary:

* ``off_support``: ``sum_v q(v) [p(v) < threshold]``, the model's mass on tokens to which the
  teacher gives less than ``threshold`` (1e-3 by default);
* ``entropy``: ``H(q) = -sum_v q(v) log q(v)``, in nats;
* ``forward_kl`` and ``reverse_kl``: the exact ``KL(p || q)`` and ``KL(q || p)`` of
  :mod:`mgsr_bench.losses.divergences`;
* ``nll``: ``-log q(y)`` of the reference token;
* ``top1``: how often the model's most likely token is the teacher's.

The teacher scored against itself gives the floor: its own off-support mass and entropy, KLs of 0,
``top1`` of 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedModel

from mgsr_bench.data.collate import Example, collate, token_batch
from mgsr_bench.losses import divergences as D
from mgsr_bench.models.heads import selected_logits

METRICS = ("off_support", "entropy", "forward_kl", "reverse_kl", "nll", "top1")


def position_values(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                    threshold: float) -> dict[str, torch.Tensor]:
    """Each of :data:`METRICS` at every one of the N positions of ``(N, V)`` logits (shape ``(N,)``)."""
    log_q = torch.log_softmax(logits.float(), -1)
    log_p = torch.log_softmax(teacher_logits.float(), -1)
    q = log_q.exp()
    return {"off_support": (q * (log_p < math.log(threshold))).sum(-1),
            "entropy": -(q * log_q).sum(-1),
            "forward_kl": D.forward_kl(logits, teacher_logits),
            "reverse_kl": D.reverse_kl(logits, teacher_logits),
            "nll": D.cross_entropy(logits, targets),
            "top1": (log_q.argmax(-1) == log_p.argmax(-1)).float()}


@torch.no_grad()
def agreement(model: PreTrainedModel, teacher: PreTrainedModel, examples: list[Example], vocab_size: int,
              pad_id: int, threshold: float = 1e-3, batch_size: int = 8) -> dict[str, Any]:
    """Token means of :data:`METRICS` for ``model`` against ``teacher`` over ``examples`` (both
    models on one device), and ``tokens``, the number of positions they average."""
    device = next(model.parameters()).device
    sums = dict.fromkeys(METRICS, 0.0)
    tokens = 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start: start + batch_size], pad_id)
        mask, selected = token_batch(batch)
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        mask = mask.to(device)
        logits = selected_logits(model, inputs, mask, vocab_size)
        teacher_logits = logits if teacher is model else selected_logits(teacher, inputs, mask, vocab_size)
        values = position_values(logits, teacher_logits, selected.targets.to(device), threshold)
        for name, value in values.items():
            sums[name] += float(value.double().sum())
        tokens += len(selected)
    return {**{name: total / tokens for name, total in sums.items()}, "tokens": tokens}
