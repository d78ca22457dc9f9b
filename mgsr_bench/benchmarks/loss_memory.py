"""Benchmark: how many fp32 ``(rows, V)`` tensors one chunk of each method's loss holds at its peak.

    python -m mgsr_bench.benchmarks.loss_memory [--methods kd,gkd,...]

The memory planner counts a method's loss chunk as ``Method.chunk_tensors`` such tensors; this
measures them. For each method, one chunk of 384 response rows over the tokenizer's vocabulary
(the real GPT-2 tokenizer's, V = 50257, from the shared material; the rows annotated as the
method annotates them, a third each from the ground truth, the student and the teacher) goes
through :func:`mgsr_bench.losses.chunked.chunked_linear_loss` forward and
backward; the peak is the growth of Linux's resident-set peak (``VmHWM``, reset before each
method through ``/proc/self/clear_refs``), divided by ``rows x V x 4`` bytes. The hidden width is
64, so the heads' own weights and gradients are a small part of the figure. Prints one JSON
object, method -> ``{"measured": ..., "declared": ...}``. Linux only; CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mgsr_bench.errors import UserError

ROWS, RESPONSE, HIDDEN = 6, 64, 64  # 6 responses of 64 tokens: a chunk of 384 rows
WORDS = "the cat sat on the mat and looked at the dog in the garden with a red ball".split()
RESET = Path("/proc/self/clear_refs")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def measure(tokenizer: Any, methods: list[str]) -> dict[str, dict[str, float]]:
    """Each method's measured and declared ``chunk_tensors``, in this process."""
    import torch

    from mgsr_bench.data.collate import Example, collate, token_batch
    from mgsr_bench.losses.chunked import chunked_linear_loss
    from mgsr_bench.methods import get_method

    if not RESET.exists():
        raise UserError("the loss-memory benchmark reads Linux's resettable peak (/proc/self/clear_refs): "
                        "run it on Linux")
    vocab = len(tokenizer)
    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(ROWS):
        text = " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (400,), generator=g).tolist())
        ids = tokenizer(text, add_special_tokens=False).input_ids
        examples.append(Example(ids[:16], ids[16: 16 + RESPONSE - 1] + [tokenizer.eos_token_id],
                                origin=("ground_truth", "student", "teacher")[i % 3]))
    out = {}
    for name in methods:
        method = get_method(name)
        annotated = method.annotate(examples, tokenizer)
        batch = collate(annotated, tokenizer.pad_token_id)
        _, tokens = token_batch(batch, {**method.batch_counts(annotated), "tokens": len(examples) * RESPONSE})
        n = len(tokens.targets)
        hidden = torch.randn(n, HIDDEN, generator=g).requires_grad_()
        weight = (torch.randn(vocab, HIDDEN, generator=g) * 0.02).requires_grad_()
        teacher = (torch.randn(n, HIDDEN, generator=g), torch.randn(vocab, HIDDEN, generator=g) * 0.02) \
            if method.needs_teacher else (None, None)
        module = method.module()
        params = list(module.parameters()) if module is not None else []
        RESET.write_text("5")  # the peak restarts at the current resident size
        before = _status("VmRSS")
        chunked_linear_loss(hidden, weight, *teacher, tokens, method.token_losses, n, params).backward()
        out[name] = {"measured": round((_status("VmHWM") - before) / (n * vocab * 4), 2),
                     "declared": method.chunk_tensors}
    return out


def main(argv: list[str] | None = None) -> None:
    import torch

    from mgsr_bench.benchmarks.generation import gpt2_tokenizer
    from mgsr_bench.methods.registry import available_methods

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", help="comma-separated (default: every registered method)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    methods = args.methods.split(",") if args.methods else sorted(available_methods())
    print(json.dumps(measure(gpt2_tokenizer(), methods)))


if __name__ == "__main__":
    main()
