"""Benchmark: the bytes a transformer layer saves for its backward pass, per token.

    python -m mgsr_bench.benchmarks.activation_memory                 # CPU kernels
    python -m mgsr_bench.benchmarks.activation_memory --device cuda   # CUDA's (on a GPU)

The memory planner counts a student's activations per layer and token as
``hidden x h + mlp x I + per_position x s`` bytes (``h`` the hidden width, ``I`` the MLP width,
``s`` the sequence length), plus ``materialised x heads x s`` where attention is computed as an
explicit ``(s, s)`` matrix, with coefficients by compute dtype and MLP kind
(:data:`mgsr_bench.train.memory_plan.ACTIVATION_BYTES`). This measures them: the tensors autograd
saves during the forward pass of transformers' own GPT-2 (GELU MLP), OPT (ReLU MLP) and LLaMA
(gated SiLU MLP, as Qwen2's) bodies, in training mode with their own dropout, counted through
``torch.autograd.graph.saved_tensors_hooks`` (each storage once, parameters excluded), for one
and two layers (the difference is one layer), at two
MLP widths and two sequence lengths (the differences give the coefficients), in fp32 and under bf16
autocast of an fp32 module as the harness trains. GPT-2's attention dropout is off except in the
materialised row: it makes torch's CPU attention fall back to the explicit matrix, where CUDA's
fused kernels keep it implicit. Counting saved tensors, not the allocator, makes the figures
exact and the same on every machine with the same torch and transformers. The table holds the CPU
kernels' figures; ``--device cuda`` measures CUDA's, whose fused attention keeps no matrix even
under dropout (the GPU check runs it; ``tests/plan_vs_peak.py`` compares whole plans with CUDA
peaks).

Prints one JSON object: dtype -> kind -> coefficient -> ``{"measured": ..., "declared": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

H, HEADS, BATCH = 128, 4, 8
WIDTHS, LENGTHS = (512, 1024), (128, 256)


def _config(kind: str, layers: int, mlp: int, dropout: bool) -> Any:
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    if kind == "gelu":  # GPT-2's residual and embedding dropout as it trains; its attention dropout on request
        return GPT2Config(vocab_size=1000, n_embd=H, n_layer=layers, n_head=HEADS, n_inner=mlp, n_positions=1024,
                          attn_pdrop=0.1 if dropout else 0.0)
    if kind == "relu":  # OPT's defaults: dropout 0.1, attention dropout 0
        return OPTConfig(vocab_size=1000, hidden_size=H, num_hidden_layers=layers, num_attention_heads=HEADS,
                         ffn_dim=mlp, word_embed_proj_dim=H)
    return LlamaConfig(vocab_size=1000, hidden_size=H, num_hidden_layers=layers, num_attention_heads=HEADS,
                       num_key_value_heads=HEADS, intermediate_size=mlp)


def saved_bytes(kind: str, layers: int, mlp: int, seq: int, dtype: str, dropout: bool = False,
                device: str = "cpu") -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one forward of the body."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(kind, layers, mlp, dropout)).to(device).train()
    body = model.transformer if kind == "gelu" else model.model
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(1, 1000, (BATCH, seq), device=device)
    mask = torch.ones(BATCH, seq, dtype=torch.long, device=device)
    mask[0, : seq // 4] = 0  # left padding, as the harness's prompts have
    autocast = torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        body(input_ids=ids, attention_mask=mask)
    return sum(seen.values())


def coefficients(kind: str, dtype: str, device: str = "cpu") -> dict[str, float]:
    """One layer's saved bytes per token as ``hidden x h + mlp x I + per_position x s`` (and, for
    GELU, the materialised attention's bytes per head and position)."""

    def layer(mlp: int, seq: int, dropout: bool = False) -> float:
        one, two = (saved_bytes(kind, n, mlp, seq, dtype, dropout, device) for n in (1, 2))
        return (two - one) / (BATCH * seq)

    (i0, i1), (s0, s1) = WIDTHS, LENGTHS
    base = layer(i0, s0)
    mlp = (layer(i1, s0) - base) / (i1 - i0)
    per_position = (layer(i0, s1) - base) / (s1 - s0)
    out = {"hidden": (base - mlp * i0 - per_position * s0) / H, "mlp": mlp, "per_position": per_position}
    if kind == "gelu":
        dropped = layer(i0, s0, True), layer(i0, s1, True)
        out["materialised"] = ((dropped[1] - dropped[0]) / (s1 - s0) - per_position) / HEADS
    return {k: round(v, 2) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    import torch

    from mgsr_bench.train.memory_plan import ACTIVATION_BYTES, MATERIALISED_ATTENTION_BYTES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    out: dict[str, Any] = {}
    for dtype in ("float32", "bfloat16"):
        for kind in ("gelu", "relu", "gated"):
            declared = dict(zip(("hidden", "mlp", "per_position"), ACTIVATION_BYTES[dtype][kind]))
            if kind == "gelu":
                declared["materialised"] = MATERIALISED_ATTENTION_BYTES
            out.setdefault(dtype, {})[kind] = {name: {"measured": value, "declared": declared[name]}
                                               for name, value in coefficients(kind, dtype, args.device).items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
