"""Built-in methods of the foundation harness: supervised fine-tuning and forward-KL KD."""

from __future__ import annotations

import torch

from mgsr_bench.losses import cross_entropy, forward_kl
from mgsr_bench.methods.base import Method
from mgsr_bench.methods.registry import register


@register
class SFT(Method):
    """Supervised fine-tuning: cross-entropy on the ground-truth response tokens; no teacher."""

    name = "sft"
    needs_teacher = False

    def token_losses(self, student_logits, teacher_logits, targets) -> torch.Tensor:
        return cross_entropy(student_logits, targets)


@register
class KD(Method):
    """Word-level KD (Hinton et al., 2015; Kim & Rush, 2016) on ground-truth responses.

    ``L = (1 - sft_weight) * KL(p_tau || q_tau) + sft_weight * CE(y)`` per token, with the exact
    forward KL (see :func:`mgsr_bench.losses.forward_kl`).
    """

    name = "kd"

    def __init__(self, temperature: float = 1.0, sft_weight: float = 0.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= sft_weight <= 1.0:
            raise ValueError(f"sft_weight must be in [0, 1], got {sft_weight}")
        self.temperature = temperature
        self.sft_weight = sft_weight

    def token_losses(self, student_logits, teacher_logits, targets) -> torch.Tensor:
        loss = forward_kl(student_logits, teacher_logits, self.temperature)
        if self.sft_weight:
            loss = (1 - self.sft_weight) * loss + self.sft_weight * cross_entropy(student_logits, targets)
        return loss
