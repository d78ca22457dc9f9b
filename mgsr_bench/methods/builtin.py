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
from mgsr_bench.methods.base import AdaptiveReplay, Method
from mgsr_bench.methods.options import option
from mgsr_bench.methods.registry import register
from mgsr_bench.sampling import SourceSpec


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

    teacher_distribution_only = True

    temperature: float = option(1.0, gt=0)
    sft_weight: float = option(0.0, ge=0, le=1)

    def token_divergence(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The divergence per token, shape ``(N,)``."""
        raise NotImplementedError

    def token_losses(self, student_logits, teacher_logits, tokens) -> torch.Tensor:
        loss = self.token_divergence(student_logits, teacher_logits)
        if self.sft_weight:
            loss = (1 - self.sft_weight) * loss + self.sft_weight * cross_entropy(student_logits, tokens.targets)
        return loss


@register
class KD(_Distillation):
    """Word-level KD (Hinton et al., 2015; Kim & Rush, 2016): forward KL(p || q) on ground truth."""

    name = "kd"
    chunk_tensors = 7.0

    cross_entropy_form: bool = False

    def token_divergence(self, student_logits, teacher_logits):
        return D.forward_kl(student_logits, teacher_logits, self.temperature, self.cross_entropy_form)


@register
class RKL(_Distillation):
    """Reverse KL(q || p) on ground-truth responses."""

    name = "rkl"
    chunk_tensors = 7.0

    def token_divergence(self, student_logits, teacher_logits):
        return D.reverse_kl(student_logits, teacher_logits, self.temperature)


@register
class JSD(_Distillation):
    """Generalized JSD(beta), TRL's convention, on ground-truth responses (GKD with lambda = 0)."""

    name = "jsd"
    chunk_tensors = 11.0

    beta: float = option(0.5, ge=0, le=1)

    def token_divergence(self, student_logits, teacher_logits):
        return D.generalized_jsd(student_logits, teacher_logits, self.beta, self.temperature)


@register
class TVD(_Distillation):
    """Total variation distance on ground-truth responses."""

    name = "tvd"
    chunk_tensors = 7.0

    def token_divergence(self, student_logits, teacher_logits):
        return D.total_variation(student_logits, teacher_logits, self.temperature)


@register
class SkewForwardKL(_Distillation):
    """DistiLLM's skew forward KL(p || a p + (1 - a) q) on ground-truth responses."""

    name = "sfkl"
    chunk_tensors = 10.0

    alpha: float = option(0.1, ge=0, lt=1)

    def token_divergence(self, student_logits, teacher_logits):
        return D.skew_forward_kl(student_logits, teacher_logits, self.alpha, self.temperature)


@register
class SkewReverseKL(SkewForwardKL):
    """DistiLLM's skew reverse KL(q || (1 - a) p + a q) on ground-truth responses."""

    name = "srkl"

    def token_divergence(self, student_logits, teacher_logits):
        return D.skew_reverse_kl(student_logits, teacher_logits, self.alpha, self.temperature)


@register
class GKD(JSD):
    """GKD (Agarwal et al., 2024): JSD(beta) on student samples with probability ``lmbda`` per step.

    TRL's ``GKDTrainer`` defaults: ``beta = 0.5``, ``lmbda = 0.5``. With ``seq_kd`` the steps that
    are not on-policy train on teacher samples instead of the ground truth (TRL's ``seq_kd``).
    """

    name = "gkd"

    lmbda: float = option(0.5, ge=0, le=1)
    seq_kd: bool = False

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

    alpha: float = 0.5
    beta: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        # the divergence's own check of the pair, run now rather than at the first step
        D.alpha_beta_divergence(torch.zeros(1, 2), torch.zeros(1, 2), self.alpha, self.beta)

    def token_divergence(self, student_logits, teacher_logits):
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

    def token_divergence(self, student_logits, teacher_logits):
        return D.forward_kl(student_logits, teacher_logits, self.temperature)


@register
class FDistillRKL(_FDistill):
    """f-distill RKL: KL(q || p) per step on student-sampled responses."""

    name = "fdistill-rkl"
    chunk_tensors = 7.0

    def source_spec(self) -> SourceSpec:
        return SourceSpec(student_prob=1.0)

    def token_divergence(self, student_logits, teacher_logits):
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

    def token_divergence(self, student_logits, teacher_logits):
        return D.total_variation(student_logits, teacher_logits, self.temperature)


@register
class DistiLLM(_Distillation, AdaptiveReplay):
    """DistiLLM (Ko et al., 2024): skew KL with the adaptive off-policy replay of student samples."""

    name = "distillm"
    chunk_tensors = 10.0

    divergence: str = option("srkl", choices=("sfkl", "srkl"))
    alpha: float = option(0.1, ge=0, lt=1)

    def token_divergence(self, student_logits, teacher_logits):
        skew = D.skew_forward_kl if self.divergence == "sfkl" else D.skew_reverse_kl
        return skew(student_logits, teacher_logits, self.alpha, self.temperature)
