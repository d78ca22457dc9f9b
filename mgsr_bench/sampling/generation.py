"""Sample responses for training from left-padded prompts."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel

from mgsr_bench.data.collate import left_pad


@torch.no_grad()
def sample_responses(model: PreTrainedModel, prompts: list[list[int]], eos_id: int, pad_id: int,
                     max_new_tokens: int, temperature: float = 1.0, generator_seed: int | None = None) -> list[list[int]]:
    """One sampled response per prompt (token ids), in input order.

    The model runs in eval mode (restored afterwards) with pure sampling: ``top_k = 0``,
    ``top_p = 1``, the given temperature. Prompts are left-padded into one batch. Each response is
    cut after its first EOS, which it keeps (it is a real prediction the loss must see); what
    ``generate`` appends after it is padding and is dropped, so it can never enter the loss even
    when pad == eos. A response that hits ``max_new_tokens`` has no EOS.
    """
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids, attn = left_pad(prompts, pad_id)
    width = ids.shape[1]
    config = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=temperature,
                              max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id)
    out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=config)
    model.train(was_training)
    responses = []
    for row in out[:, width:].tolist():
        responses.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return responses
