"""Batched generation from left-padded prompts, with the evaluation protocol's decoding settings."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from mgsr_bench.data.collate import left_pad


def decoding_config(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, greedy: bool,
                    temperature: float = 1.0, no_repeat_ngram_size: int = 6) -> GenerationConfig:
    """MiniLLM's evaluation decoding: pure sampling (top_k=0, top_p=1, temperature 1) with
    ``no_repeat_ngram_size=6`` (which, as in ``transformers``' generate, also bans 6-grams of the
    prompt; 0 turns it off); ``greedy`` switches sampling off and keeps everything else."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=not greedy, top_k=0, top_p=1.0,
        temperature=temperature if not greedy else None, no_repeat_ngram_size=no_repeat_ngram_size or None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             gen_config: GenerationConfig, batch_size: int = 64, seed: int | None = None,
             max_prompt: int = 256, progress: str | None = None) -> list[str]:
    """Generate one response per prompt, returned in input order.

    Prompts are encoded without special tokens, cut to their first ``max_prompt`` tokens,
    sorted by length (less padding), left-padded and generated in batches with the KV cache.
    Responses are decoded with ``skip_special_tokens``, cut at the EOS text and stripped.
    ``seed`` seeds torch's generator once before the first batch, so that a run is reproducible
    for a fixed batch size (sampled outputs depend on the batch composition).
    """
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False).input_ids[:max_prompt] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        idx = order[start: start + batch_size]
        ids, attn = left_pad([encoded[i] for i in idx], pad)
        width = ids.shape[1]
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=gen_config)
        for row, i in enumerate(idx):
            text = tokenizer.decode(out[row, width:], skip_special_tokens=True)
            if tokenizer.eos_token:
                text = text.split(tokenizer.eos_token)[0]
            outputs[i] = text.strip()
    model.train(was_training)
    return outputs
