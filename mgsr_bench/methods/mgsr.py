"""MGSR (Liu et al., arXiv 2407.10068): SFT + DAC-KL + span loss on SCRG-revised samples.

``L = sft_weight * L_SFT + dac_weight * L_DAC + span_weight * L_span`` per response token, reduced
by the harness like every other method (token mean over the global batch; the span term is a mean
over span pairs through ``pair_scale``). L_SFT only applies to ground-truth rows. Samples come from
DistiLLM's adaptive off-policy replay, and SCRG revises every batch the student generates before it
is trained on or stored. Every detail the paper leaves open is an option with the default of
``../shared/specs/mgsr.md`` (see docs/methods/mgsr.md for the table).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import PreTrainedTokenizerBase

from mgsr_bench.data.collate import JOINED, Example, TokenBatch
from mgsr_bench.data.spans import SPAN_MODES, extract_spans, span_links, spacy_pipeline
from mgsr_bench.losses import divergences as D
from mgsr_bench.losses.dac_kl import OUTSIDE, BandNet, dac_kl, kept_mass, reverse_gradient, teacher_head
from mgsr_bench.losses.span import RELATIONS, span_pair_losses
from mgsr_bench.methods.base import AdaptiveReplay, ExtraTrainable
from mgsr_bench.methods.options import option
from mgsr_bench.methods.registry import register
from mgsr_bench.sampling import SourceSpec
from mgsr_bench.sampling.scrg import DIFFERENCES, SCRG, TEACHER_TOKENS

TOKEN_LOSSES = ("dac_kl", "fkl")
SUBNET_MODES = ("joint", "fixed", "adversarial")
TARGETS = ("label", "teacher_argmax")
#: the key of :meth:`MGSR.batch_counts`: span pairs in the global batch
PAIRS = "span_pairs"


@register
class MGSR(AdaptiveReplay):
    """Multi-granularity semantic revision; the options (the sampling schedule's from
    :class:`AdaptiveReplay`) are listed in docs/methods/mgsr.md."""

    name = "mgsr"
    # its ground-truth rows can read a teacher cache (TopK.as_logits); SCRG and sampled rows run the teacher
    teacher_distribution_only = True
    # measured at the default options (outside: drop); outside: bucket adds masked (rows, V) copies of the
    # teacher's and student's log-probabilities for the bucket's mass, not measured
    chunk_tensors = 8.5

    # objective
    sft_weight: float = option(1.0, ge=0)
    dac_weight: float = option(1.0, ge=0)
    span_weight: float = option(1.0, ge=0)
    token_loss: str = option("dac_kl", choices=TOKEN_LOSSES)
    temperature: float = option(1.0, gt=0)
    # SCRG (sequence level)
    rounds: int = option(1, ge=0)
    teacher_token: str = option("argmax", choices=TEACHER_TOKENS)
    difference: str = option("fkl", choices=DIFFERENCES)
    # DAC-KL (token level)
    top_k_max: int = option(256, ge=1)
    target: str = option("label", choices=TARGETS)
    subnet: str = option("joint", choices=SUBNET_MODES)
    subnet_inputs: int = option(64, ge=1)
    subnet_hidden: int = option(64, ge=1)
    subnet_lr: float = option(1e-3, gt=0)
    sharpness: float = option(0.02, gt=0)
    renormalize: bool = True
    outside: str = option("drop", choices=OUTSIDE)
    coverage: float = option(0.9, ge=0, le=1)
    coverage_weight: float = option(1.0, ge=0)
    fixed_lower: float = 0.1  # with fixed_upper: checked as a pair (lower < upper)
    fixed_upper: float = 0.9
    # span level
    spans: str = option("rule", choices=SPAN_MODES)
    span_max_tokens: int = option(8, ge=2)
    span_top_k: int = option(64, ge=1)
    relation: str = option("hadamard", choices=RELATIONS)
    spacy_model: str = "en_core_web_sm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fixed_lower >= self.fixed_upper:
            raise ValueError(f"fixed_lower must be < fixed_upper, got {self.fixed_lower} >= {self.fixed_upper}")
        if self.spans == "spacy" and self.span_weight:
            spacy_pipeline(self.spacy_model)  # a missing spaCy or model is reported now, before any compute
        self._band_net = BandNet(self.subnet_inputs, self.subnet_hidden) if self._uses_subnet else None
        self._links: dict[tuple[int, ...], list[bool]] = {}
        self._sums: dict[str, float] = {}

    @property
    def _uses_subnet(self) -> bool:
        return self.token_loss == "dac_kl" and self.dac_weight > 0 and self.subnet != "fixed"

    def source_spec(self) -> SourceSpec:
        scrg = SCRG(self.rounds, self.teacher_token, self.difference, self.temperature) if self.rounds else None
        return SourceSpec(adaptive=self.adaptive_schedule(), rewrite=scrg)

    # -- f_phi, the band sub-network --------------------------------------------------------------
    def module(self) -> torch.nn.Module | None:
        return self._band_net

    def extra_trainable(self, device: torch.device) -> ExtraTrainable | None:
        """f_phi, re-initialised from the training seed, with its own AdamW at ``subnet_lr``."""
        if self._band_net is None:
            return None
        for layer in self._band_net.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        self._band_net.to(device).train()
        return ExtraTrainable(self._band_net, torch.optim.AdamW(self._band_net.parameters(), lr=self.subnet_lr))

    # -- span pairs -------------------------------------------------------------------------------
    def annotate(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase) -> list[Example]:
        """Mark the span pairs of every response (cached for ground-truth rows, which recur every epoch).

        A pair is a token and the next one inside one span: the :data:`JOINED` mark, which also
        keeps both in one loss chunk.
        """
        if not self.span_weight:
            return examples
        out = []
        for e in examples:
            key = tuple(e.response_ids)
            links = self._links.get(key)
            if links is None:
                spans = extract_spans(tokenizer, e.response_ids, self.spans, self.span_max_tokens, self.spacy_model)
                links = span_links(len(e.response_ids), spans)
                if e.origin == "ground_truth":
                    self._links[key] = links
            out.append(dataclasses.replace(e, marks={**e.marks, JOINED: links}))
        return out

    def batch_counts(self, examples: list[Example]) -> dict[str, int]:
        """The span pairs, so that the span term is a mean over the global batch's pairs."""
        if not self.span_weight:
            return {}
        return {PAIRS: sum(sum(e.marks[JOINED]) for e in examples if JOINED in e.marks)}

    @staticmethod
    def pair_scale(tokens: TokenBatch) -> float:
        """Response tokens per span pair in the global batch: a per-token sum of pair terms times this,
        divided by the token count as the harness does, is the mean over pairs."""
        pairs = tokens.totals.get(PAIRS, 0)
        return tokens.totals["tokens"] / pairs if pairs else 0.0

    # -- the loss ---------------------------------------------------------------------------------
    def _add(self, name: str, value: torch.Tensor) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + float(value.detach().sum())

    def step_stats(self) -> dict[str, float]:
        """Mean DAC-KL and span loss per scored token / pair, band bounds and kept teacher mass of the step."""
        sums, self._sums = self._sums, {}
        stats = {}
        tokens, pairs = sums.get("tokens", 0.0), sums.get("pairs", 0.0)
        for name in ("dac", "lower", "upper", "kept"):
            if name in sums and tokens:
                stats[f"mgsr_{name}"] = sums[name] / tokens
        if pairs:
            stats["mgsr_span"] = sums["span"] / pairs
        return stats

    def _band(self, sorted_probs: torch.Tensor, entropy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.subnet == "fixed":
            return sorted_probs.new_tensor(self.fixed_lower), sorted_probs.new_tensor(self.fixed_upper)
        return self._band_net(sorted_probs, entropy)

    def dac_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, tokens: TokenBatch,
                 top_k: int | None = None) -> torch.Tensor:
        """DAC-KL per token over the teacher's ``top_k`` ranks (default ``top_k_max``), plus the
        sub-network's coverage term as a zero-valued, gradient-only addend."""
        log_p, sorted_probs, ids, entropy = teacher_head(teacher_logits, top_k or self.top_k_max, self.temperature)
        target = tokens.targets
        if self.target == "teacher_argmax":
            target = ids[:, 0]
        else:  # the label on ground-truth rows, the teacher's argmax on sampled rows
            target = torch.where(tokens.is_from("ground_truth"), target, ids[:, 0])
        lower, upper = self._band(sorted_probs, entropy)
        band_lower, band_upper = ((reverse_gradient(lower), reverse_gradient(upper)) if self.subnet == "adversarial"
                                  else (lower, upper))
        loss, kept = dac_kl(student_logits, log_p, sorted_probs, ids, target, band_lower, band_upper,
                            self.sharpness, self.renormalize, self.temperature, self.outside)
        if self.subnet == "adversarial":  # the coverage term still pulls f_phi towards coverage
            kept = kept_mass(log_p, sorted_probs, ids, target, lower, upper, self.sharpness)
        n = torch.ones_like(loss)
        self._add("tokens", n)
        self._add("dac", loss)
        self._add("kept", kept)
        self._add("lower", lower * n)
        self._add("upper", upper * n)
        if self.subnet != "fixed" and self.coverage_weight:
            # L_phi = L_DAC + gamma * relu(rho - M_kept): the coverage term reaches only f_phi (M_kept does
            # not depend on the student) and adds nothing to the reported loss.
            penalty = self.coverage_weight * torch.relu(self.coverage - kept)
            loss = loss + (penalty - penalty.detach())
        return loss

    def token_losses(self, student_logits, teacher_logits, tokens) -> torch.Tensor:
        """The three terms per token. A cached teacher (:class:`~mgsr_bench.losses.divergences.TopK`) is read
        as its completion (:meth:`TopK.as_logits`: the rest spread evenly), and DAC-KL's ranks stop at
        the cache's k like the tail beyond ``top_k_max``; both are exact when k is the vocabulary."""
        top_k = self.top_k_max
        if isinstance(teacher_logits, D.TopK):
            D.check_temperature(teacher_logits, self.temperature)
            top_k = min(top_k, teacher_logits.ids.shape[-1])
            teacher_logits = teacher_logits.as_logits(student_logits.shape[-1])
        loss = torch.zeros(len(tokens), dtype=torch.float64 if student_logits.dtype == torch.float64 else torch.float32,
                           device=student_logits.device)
        if self.sft_weight:
            sft = D.cross_entropy(student_logits, tokens.targets)
            loss = loss + self.sft_weight * sft * tokens.is_from("ground_truth")
        if self.dac_weight:
            if self.token_loss == "dac_kl":
                loss = loss + self.dac_weight * self.dac_term(student_logits, teacher_logits, tokens, top_k)
            else:
                loss = loss + self.dac_weight * D.forward_kl(student_logits, teacher_logits, self.temperature)
        if self.span_weight and tokens.joined is not None:
            pairs = span_pair_losses(student_logits, teacher_logits, tokens.joined, self.span_top_k, self.relation,
                                     self.temperature)
            self._add("span", pairs)
            self._add("pairs", tokens.joined.float())
            loss = loss + self.span_weight * self.pair_scale(tokens) * pairs
        return loss
