"""Turn records into padded token batches with response-only labels.

The label tensor is the single source of truth for the loss mask: prompt positions and padding
are ``IGNORE`` (-100), response positions, including the response's own final EOS, hold their token
id. Because the tiny suite (like GPT-2) uses EOS as the padding token, a mask derived from
``input_ids != pad_id`` would drop that final EOS and the model would never learn to stop; deriving
it from labels avoids the bug by construction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from mgsr_bench.data.jsonl import first_reference

IGNORE = -100
ORIGINS = ("ground_truth", "student", "teacher")  # where a response came from; replayed samples are "student"


#: The mark of a position whose loss term also reads the next position (a term over adjacent pairs):
#: the chunked loss never puts the two in different chunks.
JOINED = "joined"
#: Prefix of a collated batch's keys that hold a method's per-token marks (``MARK + name``).
MARK = "mark:"


@dataclass
class Example:
    """One tokenised record: prompt ids and response ids (the response ends with EOS).

    ``origin`` says who wrote the response (one of :data:`ORIGINS`); ``marks`` holds, by name, one
    flag per response token that a method's ``annotate`` attached, so that its loss can read
    per-token side information the harness knows nothing about. ``teacher_topk`` is the teacher's
    cached distribution at each response token, ``(ids, logprobs)`` of shape ``(len(response_ids), k)``
    (:mod:`mgsr_bench.teacher_cache`), when the run reads a cache instead of running the teacher.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    origin: str = "ground_truth"
    marks: dict[str, list[bool]] = field(default_factory=dict)
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class TokenBatch:
    """What a method sees besides the logits, for each of the N selected response positions.

    ``targets`` are the next-token ids and ``origin`` indexes :data:`ORIGINS` (the row's source).
    ``marks`` are the examples' marks at the same positions (those that mark at least one token
    of the micro-batch), so a loss reads them without re-aligning anything. ``totals`` are sums
    over the whole global batch, the same in every micro-batch and process: ``"tokens"`` (the
    response tokens) and the method's ``batch_counts``; a per-token term scaled by
    ``totals["tokens"] / count`` becomes a mean over the counted items under the harness's token mean.
    """

    targets: torch.Tensor
    origin: torch.Tensor | None = None
    marks: dict[str, torch.Tensor] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None  # the cached teacher's (ids, logprobs) rows

    def __post_init__(self) -> None:
        if self.origin is None:
            self.origin = torch.zeros_like(self.targets)

    def __len__(self) -> int:
        return self.targets.shape[0]

    @property
    def joined(self) -> torch.Tensor | None:
        """The :data:`JOINED` mark: position n's loss also reads position n + 1 (None: no such pairs)."""
        return self.marks.get(JOINED)

    def slice(self, start: int, stop: int) -> "TokenBatch":
        topk = None if self.teacher_topk is None else tuple(t[start:stop] for t in self.teacher_topk)
        return TokenBatch(self.targets[start:stop], self.origin[start:stop],
                          {name: mark[start:stop] for name, mark in self.marks.items()}, self.totals, topk)

    def is_from(self, *origins: str) -> torch.Tensor:
        """Boolean mask of the positions whose row came from one of ``origins``."""
        mask = torch.zeros_like(self.targets, dtype=torch.bool)
        for name in origins:
            mask |= self.origin == ORIGINS.index(name)
        return mask


def prompts_within(records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                   max_prompt: int = 256) -> list[dict[str, Any]]:
    """The records whose prompt has at most ``max_prompt`` tokens: MiniLLM's data processing drops
    the others, whose cut would lose the `### Response:` marker the model answers after."""
    return [r for r in records if len(tokenizer(r["prompt"], add_special_tokens=False).input_ids) <= max_prompt]


def training_records(records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                     long_prompts: str) -> list[dict[str, Any]]:
    """The records a run trains (or validates) on under ``train.long_prompts``: with ``drop`` those whose
    prompt fits (:func:`prompts_within`), with ``truncate`` all of them (their prompts cut when tokenised).
    A teacher cache is written from the same records, so its rows are the run's."""
    return prompts_within(records, tokenizer) if long_prompts == "drop" else records


def tokenize_records(records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                     max_prompt: int = 256, max_length: int = 512) -> list[Example]:
    """Encode prompts (no special tokens, as MiniLLM does) and responses + EOS, truncated to fit."""
    out = []
    for r in records:
        prompt = tokenizer(r["prompt"], add_special_tokens=False).input_ids[:max_prompt]
        response = tokenizer(first_reference(r["output"]), add_special_tokens=False).input_ids
        response = response[: max_length - len(prompt) - 1] + [tokenizer.eos_token_id]
        out.append(Example(prompt, response))
    return out


def token_digest(examples: Sequence[Example]) -> str:
    """A fingerprint of tokenised examples (every prompt and response id, in order): a checkpoint
    resumes, and a teacher cache is read, only on the same data, template, tokenizer and truncation."""
    h = hashlib.sha256()
    for e in examples:
        h.update(repr((e.prompt_ids, e.response_ids)).encode())
    return h.hexdigest()[:16]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response sequences for training; labels mark response tokens only.

    Also returns ``origin`` (one index into :data:`ORIGINS` per row), for every mark an example
    carries ``MARK + name`` (bool, aligned with ``labels``; False where a row lacks it), and when
    every example carries cached teacher rows, ``teacher_ids`` and ``teacher_logprobs``: theirs
    concatenated, one row per response token in the order the loss mask selects them.
    """
    length = max(len(e.prompt_ids) + len(e.response_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    attn = torch.zeros_like(ids)
    marks = {name: torch.zeros_like(ids, dtype=torch.bool) for e in examples for name in e.marks}
    for i, e in enumerate(examples):
        seq = e.prompt_ids + e.response_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        labels[i, len(e.prompt_ids): len(seq)] = torch.tensor(e.response_ids)
        for name, flags in e.marks.items():
            marks[name][i, len(e.prompt_ids): len(seq)] = torch.tensor(flags, dtype=torch.bool)
    origin = torch.tensor([ORIGINS.index(e.origin) for e in examples], dtype=torch.long)
    cached = {}
    if all(e.teacher_topk is not None for e in examples):
        cached = {"teacher_ids": torch.cat([e.teacher_topk[0] for e in examples]),
                  "teacher_logprobs": torch.cat([e.teacher_topk[1] for e in examples])}
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "origin": origin,
            **{MARK + name: mark for name, mark in marks.items()}, **cached}


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists for generation: ``(input_ids, attention_mask)``, prompts flush right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[row, width - len(p):] = 1
    return ids, attn


def shifted_labels(labels: torch.Tensor, fill: int | bool = IGNORE) -> torch.Tensor:
    """Targets aligned with logits: position t predicts ``labels[t + 1]``; the last position predicts nothing."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], fill)], dim=1)


def token_batch(batch: dict[str, torch.Tensor], totals: dict[str, int] | None = None
                ) -> tuple[torch.Tensor, TokenBatch]:
    """The loss mask over logit positions and the :class:`TokenBatch` of the selected positions.

    A mark that flags no token of the batch is left out, so a loss tests a mark's presence only.
    """
    targets = shifted_labels(batch["labels"])
    mask = targets != IGNORE
    origin = batch["origin"].unsqueeze(1).expand_as(targets)[mask]
    marks = {key[len(MARK):]: shifted_labels(flags, False)[mask] for key, flags in batch.items()
             if key.startswith(MARK) and flags.any()}
    topk = (batch["teacher_ids"], batch["teacher_logprobs"]) if "teacher_ids" in batch else None
    return mask, TokenBatch(targets[mask], origin, marks, dict(totals or {}), topk)
