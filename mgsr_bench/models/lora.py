"""LoRA students (peft): wrap before training, merge before saving so the saved student is a plain model."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from mgsr_bench.errors import UserError
from mgsr_bench.models.pairs import LoraSettings


def apply_lora(model: PreTrainedModel, settings: LoraSettings, seed: int) -> PreTrainedModel:
    """The model with LoRA adapters on ``settings.target_modules``; only the adapters train.

    The adapters' initial weights (peft's random ``lora_A``) are drawn from ``seed``, the run's
    training seed, leaving torch's global generator as it was: peft draws them from that generator,
    whose state depends on what ran before (the engine being set up, loading), so unseeded the same
    command started from other adapters under DDP, ZeRO-2 and one process."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("a LoRA pair needs peft: pip install -e '.[lora]' in the clone") from None
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [m for m in settings.target_modules if m not in names]
    if missing:
        raise UserError(f"LoRA target module(s) {', '.join(missing)} not in the student; it has e.g. "
                        f"{', '.join(sorted(n for n in names if n.endswith('proj'))[:8]) or 'no *_proj layers'}")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def merged(model: PreTrainedModel) -> PreTrainedModel:
    """A LoRA-wrapped model with its adapters merged into the base weights; any other model as is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
