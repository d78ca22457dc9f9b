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


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a distributed wrapper (DDP's ``.module``), or the model itself."""
    return getattr(model, "module", model)


def last_hidden_states(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The body's last hidden states (what the output head reads), from the model's *own* forward.

    The forward runs through the model (and any wrapper: DDP's gradient synchronisation and FSDP's
    parameter gathering hook into it) with logits computed for the last position only; a forward
    hook on the body keeps its output.
    """
    captured: list[torch.Tensor] = []
    handle = body(unwrapped(model)).register_forward_hook(
        lambda _module, _args, out: captured.append(out.last_hidden_state))
    try:
        model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[0]


def output_head(model: PreTrainedModel) -> torch.nn.Linear | None:
    """The bias-free output projection whose input is the base model's last hidden state, if any
    (looking through a distributed wrapper)."""
    model = unwrapped(model)
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
    hidden = last_hidden_states(model, inputs)[mask]
    return (hidden @ head.weight[:vocab_size].T).float()
