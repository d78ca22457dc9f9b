"""Built-in methods on ground-truth responses: SFT, and token-level distillation with each divergence.

Every distillation method here is ``(1 - sft_weight) * D(p_tau, q_tau) + sft_weight * CE(y)`` per
response token, with ``D`` one of the divergences in :mod:`mgsr_bench.losses.divergences` (see
docs/divergences.md for formulas and conventions). GKD and SeqKD train on sampled responses
through the shared sampling sources (:mod:`mgsr_bench.sampling`).
"""

from __future__ import annotations

import torch

from mgsr_bench.losses import divergences as D
from mgsr_bench.losses.divergences import cross_entropy
from mgsr_bench.methods.base import Method, Validation, follow_validation_loss
from mgsr_bench.methods.registry import register
from mgsr_bench.sampling import SourceSpec
from mgsr_bench.sampling.replay import AdaptiveSchedule


@register
class SFT(Method):
    """Supervised fine-tuning: cross-entropy on the ground-truth response tokens; no teacher."""

    name = "sft"
    chunk_tensors = 3.0
    needs_teacher = False

    def token_losses(self, student_logits, teacher_logits, tokens) -> torch.Tensor:
        return cross_entropy(student_logits, tokens.targets)


class _Distillation(Method):
    """Token-level distillation with one divergence, optionally mixed with the SFT loss."""

    def __init__(self, temperature: float = 1.0, sft_weight: float = 0.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= sft_weight <= 1.0:
            raise ValueError(f"sft_weight must be in [0, 1], got {sft_weight}")
        self.temperature = temperature
        self.sft_weight = sft_weight

    def divergence(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def token_losses(self, student_logits, teacher_logits, tokens) -> torch.Tensor:
        loss = self.divergence(student_logits, teacher_logits)
        if self.sft_weight:
            loss = (1 - self.sft_weight) * loss + self.sft_weight * cross_entropy(student_logits, tokens.targets)
        return loss


@register
class KD(_Distillation):
    """Word-level KD (Hinton et al., 2015; Kim & Rush, 2016): forward KL(p || q) on ground truth."""

    name = "kd"
    chunk_tensors = 7.0

    def __init__(self, temperature: float = 1.0, sft_weight: float = 0.0, cross_entropy_form: bool = False) -> None:
        super().__init__(temperature, sft_weight)
        self.cross_entropy_form = cross_entropy_form

    def divergence(self, student_logits, teacher_logits):
        return D.forward_kl(student_logits, teacher_logits, self.temperature, self.cross_entropy_form)


@register
class RKL(_Distillation):
    """Reverse KL(q || p) on ground-truth responses."""

    name = "rkl"
    chunk_tensors = 7.0

    def divergence(self, student_logits, teacher_logits):
        return D.reverse_kl(student_logits, teacher_logits, self.temperature)


@register
class JSD(_Distillation):
    """Generalized JSD(beta), TRL's convention, on ground-truth responses (GKD with lambda = 0)."""

    name = "jsd"
    chunk_tensors = 11.0

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, sft_weight: float = 0.0) -> None:
        super().__init__(temperature, sft_weight)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta

    def divergence(self, student_logits, teacher_logits):
        return D.generalized_jsd(student_logits, teacher_logits, self.beta, self.temperature)


@register
class TVD(_Distillation):
    """Total variation distance on ground-truth responses."""

    name = "tvd"
    chunk_tensors = 7.0

    def divergence(self, student_logits, teacher_logits):
        return D.total_variation(student_logits, teacher_logits, self.temperature)


@register
class SkewForwardKL(_Distillation):
    """DistiLLM's skew forward KL(p || a p + (1 - a) q) on ground-truth responses."""

    name = "sfkl"
    chunk_tensors = 10.0

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0, sft_weight: float = 0.0) -> None:
        super().__init__(temperature, sft_weight)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha

    def divergence(self, student_logits, teacher_logits):
        return D.skew_forward_kl(student_logits, teacher_logits, self.alpha, self.temperature)


@register
class SkewReverseKL(SkewForwardKL):
    """DistiLLM's skew reverse KL(q || (1 - a) p + a q) on ground-truth responses."""

    name = "srkl"

    def divergence(self, student_logits, teacher_logits):
        return D.skew_reverse_kl(student_logits, teacher_logits, self.alpha, self.temperature)


@register
class GKD(JSD):
    """GKD (Agarwal et al., 2024): JSD(beta) on student samples with probability ``lmbda`` per step.

    TRL's ``GKDTrainer`` defaults: ``beta = 0.5``, ``lmbda = 0.5``. With ``seq_kd`` the steps that
    are not on-policy train on teacher samples instead of the ground truth (TRL's ``seq_kd``).
    """

    name = "gkd"

    def __init__(self, beta: float = 0.5, lmbda: float = 0.5, seq_kd: bool = False, temperature: float = 1.0,
                 sft_weight: float = 0.0) -> None:
        super().__init__(beta, temperature, sft_weight)
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {lmbda}")
        self.lmbda = lmbda
        self.seq_kd = seq_kd

    def source_spec(self) -> SourceSpec:
        return SourceSpec(student_prob=self.lmbda, teacher_prob=(1 - self.lmbda) if self.seq_kd else 0.0)


@register
class SeqKD(SFT):
    """Sequence-level KD (Kim & Rush, 2016): SFT on responses sampled from the teacher."""

    name = "seqkd"

    def source_spec(self) -> SourceSpec:
        return SourceSpec(teacher_prob=1.0)


@register
class ABKD(_Distillation):
    """ABKD (Wang et al., ICML 2025): the alpha-beta divergence D_AB(p || q) on ground-truth responses.

    ``(alpha, beta) = (1, 0)`` is KD's forward KL and ``(0, 1)`` the reverse KL; the paper tunes
    (alpha, beta) per task. The default (0.5, 0.5), four times the squared Hellinger distance, is this
    project's neutral choice, not a value taken from the paper.
    """

    name = "abkd"
    chunk_tensors = 9.0

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, temperature: float = 1.0,
                 sft_weight: float = 0.0) -> None:
        super().__init__(temperature, sft_weight)
        D.alpha_beta_divergence(torch.zeros(1, 2), torch.zeros(1, 2), alpha, beta)  # rejects invalid pairs now
        self.alpha, self.beta = alpha, beta

    def divergence(self, student_logits, teacher_logits):
        return D.alpha_beta_divergence(student_logits, teacher_logits, self.alpha, self.beta, self.temperature)


class _FDistill(_Distillation):
    """f-distill (Wen et al., ACL 2023): step-wise f-divergence estimators on sampled sequences.

    The sequence-level divergence between teacher and student is estimated token by token on
    prefixes sampled from the distribution each term takes its expectation under: KL(p || q) on
    teacher samples, KL(q || p) on student samples; JS and TVD take half of each step's rows from
    the teacher and half from the student. At every prefix the full-vocabulary step-wise term is
    used (their step-wise decomposition), computed with :mod:`mgsr_bench.losses.divergences`.
    """

    def source_spec(self) -> SourceSpec:
        return SourceSpec(both=True)


@register
class FDistillKL(_FDistill):
    """f-distill KL: KL(p || q) per step on teacher-sampled responses."""

    name = "fdistill-kl"
    chunk_tensors = 7.0

    def source_spec(self) -> SourceSpec:
        return SourceSpec(teacher_prob=1.0)

    def divergence(self, student_logits, teacher_logits):
        return D.forward_kl(student_logits, teacher_logits, self.temperature)


@register
class FDistillRKL(_FDistill):
    """f-distill RKL: KL(q || p) per step on student-sampled responses."""

    name = "fdistill-rkl"
    chunk_tensors = 7.0

    def source_spec(self) -> SourceSpec:
        return SourceSpec(student_prob=1.0)

    def divergence(self, student_logits, teacher_logits):
        return D.reverse_kl(student_logits, teacher_logits, self.temperature)


@register
class FDistillJS(_FDistill):
    """f-distill JS: KL(p || m) on teacher-sampled rows and KL(q || m) on student-sampled rows, m = (p + q) / 2.

    With half of the rows from each, the token mean estimates
    ``JS = 0.5 E_p[log p / m] + 0.5 E_q[log q / m]`` (each half weighted by its share of the tokens,
    as the harness weighs every token).
    """

    name = "fdistill-js"
    chunk_tensors = 11.0

    def token_losses(self, student_logits, teacher_logits, tokens) -> torch.Tensor:
        kl_p_m, kl_q_m = D.jsd_terms(student_logits, teacher_logits, 0.5, self.temperature)
        loss = torch.where(tokens.is_from("teacher"), kl_p_m, kl_q_m)
        if self.sft_weight:
            loss = (1 - self.sft_weight) * loss + self.sft_weight * cross_entropy(student_logits, tokens.targets)
        return loss


@register
class FDistillTVD(_FDistill):
    """f-distill TVD: 0.5 * sum |p - q| per step on teacher- and student-sampled rows (half each)."""

    name = "fdistill-tvd"
    chunk_tensors = 7.0

    def divergence(self, student_logits, teacher_logits):
        return D.total_variation(student_logits, teacher_logits, self.temperature)


@register
class DistiLLM(_Distillation):
    """DistiLLM (Ko et al., 2024): skew KL with the adaptive off-policy replay of student samples."""

    name = "distillm"
    chunk_tensors = 10.0

    def __init__(self, divergence: str = "srkl", alpha: float = 0.1, init_threshold: float = 0.0,
                 loss_eps: float = 0.1, capacity: int = 1000, replay_ratio: str = "decreasing",
                 temperature: float = 1.0, sft_weight: float = 0.0) -> None:
        super().__init__(temperature, sft_weight)
        if divergence not in ("sfkl", "srkl"):
            raise ValueError(f"divergence must be 'sfkl' or 'srkl', got {divergence!r}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.divergence_name, self.alpha = divergence, alpha
        self.init_threshold, self.loss_eps, self.capacity, self.replay_ratio = (init_threshold, loss_eps, capacity,
                                                                              replay_ratio)
        self.source_spec()  # validates the schedule options now, before any compute

    def options(self) -> dict:
        options = super().options()
        options["divergence"] = options.pop("divergence_name")
        return options

    def divergence(self, student_logits, teacher_logits):
        skew = D.skew_forward_kl if self.divergence_name == "sfkl" else D.skew_reverse_kl
        return skew(student_logits, teacher_logits, self.alpha, self.temperature)

    def source_spec(self) -> SourceSpec:
        return SourceSpec(adaptive=AdaptiveSchedule(init_threshold=self.init_threshold, loss_eps=self.loss_eps,
                                                    capacity=self.capacity, replay_ratio=self.replay_ratio))

    def validate(self, validation: Validation) -> dict[str, float]:
        """The adaptive replay schedule follows the validation loss."""
        return follow_validation_loss(validation)
