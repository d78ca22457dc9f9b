"""Logits at selected positions only: the output head applied to the hidden states that need it.

Distillation scores response tokens; a prompt is usually longer than its response, so computing
the vocabulary projection at every position wastes most of a forward's head. Models whose head is
not a plain bias-free linear layer (or that post-process logits) take their own full forward.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def body(model: PreTrainedModel) -> torch.nn.Module:
    """The transformer under the output head (its output has ``last_hidden_state``); a peft
    (LoRA) wrapper is looked through."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model


def output_head(model: PreTrainedModel) -> torch.nn.Linear | None:
    """The bias-free output projection whose input is the base model's last hidden state, if any.

    A model wrapped for distributed training exposes none, so it takes the full-logits path
    (its wrapper's forward must run for gradient synchronisation).
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    config = getattr(model, "config", None)
    # Models that post-process logits (Gemma's soft-capping, Cohere's logit scale, Granite's logits
    # scaling, MiniCPM's width scaling) need their own forward.
    if (getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None)
            or getattr(config, "logits_scaling", 1.0) not in (None, 1, 1.0) or getattr(config, "dim_model_base", None)):
        return None
    return head if isinstance(head, torch.nn.Linear) and head.bias is None else None


def selected_logits(model: PreTrainedModel, inputs: dict[str, torch.Tensor], mask: torch.Tensor,
                    vocab_size: int) -> torch.Tensor:
    """``model(**inputs).logits[mask][:, :vocab_size]`` as float, with the head applied only where ``mask`` is set."""
    head = output_head(model)
    if head is None:
        return model(**inputs).logits[mask][:, :vocab_size].float()
    hidden = body(model)(**inputs).last_hidden_state[mask]
    return (hidden @ head.weight[:vocab_size].T).float()
