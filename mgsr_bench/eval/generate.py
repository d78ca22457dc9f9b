"""Batched generation for evaluation, with the protocol's decoding settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mgsr_bench.config import DEFAULT_SEEDS
from mgsr_bench.errors import UserError
from mgsr_bench.models.loading import check_positions
from mgsr_bench.sampling.decode import decode


@dataclass
class EvalSettings:
    """How models are scored (MiniLLM's evaluation scripts' defaults); recorded in every run record.

    Pure sampling (``top_k = 0``, ``top_p = 1``, ``temperature``) or greedy; prompts cut to their
    first ``max_prompt`` tokens and every response given ``max_length - max_prompt`` new tokens, as
    MiniLLM's padded prompts are; ``max_new_tokens`` caps the response further (the tiny suite's 64; ``None``: only ``max_length``);
    ``no_repeat_ngram_size`` bans n-grams of prompt + output (0: off); ``add_bos`` prepends the
    tokenizer's BOS to every prompt (LLaMA-family tokenizers); ``batch_size`` rows per generation
    batch: sampled outputs depend on it, so it is recorded.
    """

    seeds: tuple[int, ...] = DEFAULT_SEEDS
    greedy: bool = False
    temperature: float = 1.0
    batch_size: int = 64
    max_new_tokens: int | None = None
    max_length: int = 512
    max_prompt: int = 256
    no_repeat_ngram_size: int = 6
    add_bos: bool = False

    def validate(self) -> None:
        for name, flag in (("batch_size", "--eval-batch-size"), ("max_length", "--max-length"),
                           ("max_prompt", "--max-prompt")):
            if getattr(self, name) < 1:
                raise UserError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_prompt >= self.max_length:
            raise UserError(f"--max-prompt ({self.max_prompt}) must be below --max-length ({self.max_length})")
        if self.no_repeat_ngram_size < 0:
            raise UserError(f"--no-repeat-ngram-size must be >= 0, got {self.no_repeat_ngram_size}")
        if not self.greedy and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"--temperature must be > 0 when sampling, got {self.temperature}")
        if not self.seeds:
            raise UserError("--seeds must name at least one seed")

    def as_dict(self) -> dict[str, Any]:
        decoding = {"decoding": "greedy"} if self.greedy else {"decoding": "sampling", "top_k": 0, "top_p": 1.0}
        return {**asdict(self), "seeds": list(self.seeds[:1] if self.greedy else self.seeds), **decoding,
                "metric": "rougeL F x100 (rouge_score, use_stemmer=True, max over references)"}


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], settings: EvalSettings) -> list[list[int]]:
    """Prompts without special tokens, cut to ``max_prompt`` tokens, BOS first when ``add_bos``."""
    if settings.add_bos and tokenizer.bos_token_id is None:
        raise UserError("--bos: this tokenizer has no BOS token; drop --bos")
    bos = [tokenizer.bos_token_id] if settings.add_bos else []
    return [bos + tokenizer(p, add_special_tokens=False).input_ids[: settings.max_prompt - len(bos)] for p in prompts]


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             settings: EvalSettings, seed: int | None = None, progress: str | None = None) -> list[str]:
    """One response per prompt, returned in input order.

    Prompts are sorted by length (less padding), left-padded and decoded in batches of
    ``settings.batch_size`` with the KV cache; finished rows leave their batch. Every prompt may
    generate ``max_length - max_prompt`` tokens (capped by ``max_new_tokens``), whatever its batch:
    MiniLLM pads every prompt to ``max_prompt`` and generates up to ``max_length`` in all.
    Responses are decoded with ``skip_special_tokens``, cut at the EOS text and stripped. ``seed``
    seeds torch's generator once before the first batch, so a run is reproducible for a fixed
    batch size.
    """
    if seed is not None:
        torch.manual_seed(seed)
    encoded = encode_prompts(tokenizer, prompts, settings)
    budget = settings.max_length - settings.max_prompt
    if settings.max_new_tokens is not None:
        budget = min(budget, settings.max_new_tokens)
    longest = max((len(r) for r in encoded), default=0)
    check_positions(model, "model", longest + budget,
                    "a prompt with its generation budget (--max-length, --max-new-tokens)",
                    "lower --max-length or --max-new-tokens")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    batches = range(0, len(order), settings.batch_size)
    for start in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        idx = order[start: start + settings.batch_size]
        rows = [encoded[i] for i in idx]
        out = decode(model, rows, tokenizer.eos_token_id, tokenizer.pad_token_id, budget, len(tokenizer),
                     greedy=settings.greedy, temperature=settings.temperature,
                     no_repeat_ngram_size=settings.no_repeat_ngram_size)
        for i, tokens in zip(idx, out.tokens):
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            if tokenizer.eos_token:
                text = text.split(tokenizer.eos_token)[0]
            outputs[i] = text.strip()
    return outputs
