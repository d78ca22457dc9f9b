"""One batched decoder for every response the suite generates: training samples and evaluation.

``transformers``' ``generate`` keeps every row of a batch in each forward until the last row ends,
so with sampled responses of very different lengths most of the batch's decode steps compute rows
that have already finished. This loop uses the same pieces (the model's forward with its KV cache,
``transformers``' own n-gram ban) but drops a row from the batch, its cache included, as soon as it
ends; the forwards of the remaining rows are unchanged. It also keeps, when asked, the logits each
token was drawn from, so that MGSR's SCRG needs no second student pass.

Positions follow the attention mask (``cumsum - 1``), as ``generate`` computes them for left-padded
prompts. Only the first ``vocab_size`` logits are candidates: a model whose embedding matrix is
padded past the tokenizer (Qwen) never emits a token the tokenizer cannot decode.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from mgsr_bench.data.collate import left_pad


@dataclass
class Decoded:
    """Generated token ids per row (each cut after its first EOS, which it keeps) and, when kept,
    the float logits (length, vocab_size) each token was drawn from, before temperature."""

    tokens: list[list[int]]
    logits: list[torch.Tensor] | None = None


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    """``cache`` in recent ``transformers``, ``past_key_values`` before it."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@torch.no_grad()
def decode(model: PreTrainedModel, prompts: list[list[int]], eos_id: int, pad_id: int,
           max_new_tokens: int | Sequence[int], vocab_size: int | None = None, greedy: bool = False, temperature: float = 1.0,
           no_repeat_ngram_size: int = 0, keep_logits: bool = False,
           generator: torch.Generator | None = None) -> Decoded:
    """Continue each prompt until EOS or ``max_new_tokens``: greedy, or pure sampling from
    ``softmax(logits / temperature)`` (``top_k = 0``, ``top_p = 1``).

    ``max_new_tokens`` is one limit for every row or one per row (SCRG's re-generations, whose
    kept prefixes leave each row its own budget): a row leaves the batch at its own limit, so it
    is neither computed past it nor carried beyond the positions its prompt and limit need.

    ``no_repeat_ngram_size`` bans, like ``generate``, every n-gram already present in the row,
    prompt included. The model runs in eval mode, restored afterwards.
    """
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts):
        raise ValueError(f"{len(budgets)} token limits for {len(prompts)} prompts")
    if not prompts or max(budgets) < 1:
        return Decoded([[] for _ in prompts], [torch.empty(0, vocab_size or 0) for _ in prompts] if keep_logits else None)
    if min(budgets) < 1:
        raise ValueError(f"every row's max_new_tokens must be >= 1 (or all 0), got {min(budgets)}")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    was_training = model.training
    model.eval()
    try:
        return _decode(model, prompts, eos_id, pad_id, budgets, vocab_size, greedy, temperature,
                       no_repeat_ngram_size, keep_logits, generator)
    finally:
        model.train(was_training)


def _decode(model: PreTrainedModel, prompts: list[list[int]], eos_id: int, pad_id: int, budgets: list[int],
            vocab_size: int | None, greedy: bool, temperature: float, no_repeat_ngram_size: int,
            keep_logits: bool, generator: torch.Generator | None) -> Decoded:
    device = next(model.parameters()).device
    ids, attn = (t.to(device) for t in left_pad(prompts, pad_id))
    ban = NoRepeatNGramLogitsProcessor(no_repeat_ngram_size) if no_repeat_ngram_size else None
    rows = torch.arange(len(prompts), device=device)  # original row of each active row
    limit = torch.tensor(budgets, device=device)  # each active row's token limit
    cache_arg = _cache_argument(type(model))
    tokens: list[list[int]] = [[] for _ in prompts]
    steps: list[tuple[list[int], torch.Tensor]] = []  # (original rows, their logits) per step, when kept
    out = model(input_ids=ids, attention_mask=attn, position_ids=_positions(attn), use_cache=True, logits_to_keep=1)
    cache = out.get("cache", None) or out.get("past_key_values", None)  # the name depends on the version
    if isinstance(cache, tuple):  # transformers 4.x returns some models' caches in the legacy tuple form
        cache = DynamicCache.from_legacy_cache(cache)
    seqs = ids  # full rows, prompt padding included, for the n-gram ban (as generate sees them)
    for step in range(max(budgets)):
        logits = out.logits[:, -1, :vocab_size].float()
        scores = logits
        if ban is not None:
            scores = ban(seqs, scores.clone())
        if greedy:
            nxt = scores.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(scores / temperature, -1), 1, generator=generator).squeeze(-1)
        active = rows.tolist()
        for r, tok in zip(active, nxt.tolist()):
            tokens[r].append(tok)
        if keep_logits:
            steps.append((active, logits))
        alive = (nxt != eos_id) & (limit > step + 1)  # every active row has step + 1 tokens
        if not alive.any():
            break
        if not alive.all():  # drop finished rows, their cache included
            keep = alive.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, nxt, attn, seqs, limit = rows[keep], nxt[keep], attn[keep], seqs[keep], limit[keep]
        attn = torch.cat([attn, attn.new_ones(len(rows), 1)], dim=1)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=_positions(attn)[:, -1:],
                    use_cache=True, **{cache_arg: cache})
    if not keep_logits:
        return Decoded(tokens)
    per_row: list[list[torch.Tensor]] = [[] for _ in prompts]
    for active, logits in steps:
        for i, r in enumerate(active):
            per_row[r].append(logits[i])
    return Decoded(tokens, [torch.stack(k) for k in per_row])
