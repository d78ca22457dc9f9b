"""Turn records into padded token batches with response-only labels.

The label tensor is the single source of truth for the loss mask: prompt positions and padding
are ``IGNORE`` (-100), response positions, including the response's own final EOS, hold their token
id. Because the tiny suite (like GPT-2) uses EOS as the padding token, a mask derived from
``input_ids != pad_id`` would drop that final EOS and the model would never learn to stop; deriving
it from labels avoids the bug by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100


@dataclass
class Example:
    """One tokenised record: prompt ids and response ids (the response ends with EOS)."""

    prompt_ids: list[int]
    response_ids: list[int]


def tokenize_records(records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                     max_prompt: int = 256, max_length: int = 512) -> list[Example]:
    """Encode prompts (no special tokens, as MiniLLM does) and responses + EOS, truncated to fit."""
    out = []
    for r in records:
        prompt = tokenizer(r["prompt"], add_special_tokens=False).input_ids[:max_prompt]
        output = r["output"] if isinstance(r["output"], str) else r["output"][0]
        response = tokenizer(output, add_special_tokens=False).input_ids
        response = response[: max_length - len(prompt) - 1] + [tokenizer.eos_token_id]
        out.append(Example(prompt, response))
    return out


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response sequences for training; labels mark response tokens only."""
    length = max(len(e.prompt_ids) + len(e.response_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        seq = e.prompt_ids + e.response_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        labels[i, len(e.prompt_ids): len(seq)] = torch.tensor(e.response_ids)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists for generation: ``(input_ids, attention_mask)``, prompts flush right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[row, width - len(p):] = 1
    return ids, attn


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """Targets aligned with logits: position t predicts ``labels[t + 1]``; the last position predicts nothing."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)
