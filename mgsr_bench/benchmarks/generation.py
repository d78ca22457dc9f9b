"""Benchmark: evaluation generation throughput, the project's decoder vs ``transformers``' generate.

    python -m mgsr_bench.benchmarks.generation --limit 32            # tiny pair, four shared sets
    python -m mgsr_bench.benchmarks.generation --model gpt2-124m     # GPU: GPT-2 small shape, random weights

Prompts come from the four shared evaluation sets (Dolly, SelfInst, Vicuna, S-NI in
``$MGSR_BENCH_SHARED/data/instruct``, default ``../shared``), ``--limit`` per set, encoded with
the model's tokenizer and the protocol's settings (pure sampling, ``max_length`` 512 with prompts
cut to 256 tokens, ``no_repeat_ngram_size`` 6, seed 10). Both decoders get the same length-sorted
batches; the figures are samples per second and generated tokens per second (counted from
``generate``'s output ids for transformers, and by re-tokenising the decoded text plus one EOS for
mgsr-bench, which returns text: approximate). Sampled outputs depend on the batch size, which is
printed with them.

Run it alone: another torch process on the same cores distorts every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

SETS = {"dolly": "dolly/valid.jsonl", "selfinst": "self-inst/valid.jsonl", "vicuna": "vicuna/valid.jsonl",
        "sni": "sinst/11_/valid.jsonl"}


def shared_root() -> Path:
    """The project's shared material (``../shared``, or ``$MGSR_BENCH_SHARED``)."""
    return Path(os.environ.get("MGSR_BENCH_SHARED", Path(__file__).resolve().parents[3] / "shared"))


def gpt2_tokenizer() -> Any:
    """The real GPT-2 tokenizer from the shared material (V = 50257), EOS as its padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shared_root() / "tokenizers" / "gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def shared_prompts(limit: int | None) -> dict[str, list[str]]:
    from mgsr_bench.data.instruct import load_instruct
    from mgsr_bench.errors import UserError

    folder = shared_root() / "data" / "instruct"
    if not folder.is_dir():
        raise UserError(f"shared evaluation data not found at {folder}; set MGSR_BENCH_SHARED")
    return {name: [r["prompt"] for r in load_instruct(folder / path)][:limit] for name, path in SETS.items()}


def models(kind: str, device: str):
    """(label, model, tokenizer) pairs: the tiny suite's teacher and student, or a random GPT-2 small shape."""
    import torch

    if kind == "tiny":
        from mgsr_bench.models import load_model
        from mgsr_bench.suite.build import SUITES, ensure_suite, load_suite_models

        suite = ensure_suite(SUITES["tiny"])
        tokenizer, teacher = load_suite_models(suite)
        return [("tiny teacher", teacher.to(device), tokenizer),
                ("tiny student", load_model(suite.student_init_dir).to(device), tokenizer)]
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = gpt2_tokenizer()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = GPT2LMHeadModel(GPT2Config(n_positions=1024)).to(device=device, dtype=dtype).eval()
    return [("gpt2-124m (random)", model, tokenizer)]


def hf_generate(model, tokenizer, prompts: list[str], settings, seed: int) -> int:
    """transformers' generate on the same batches as ``mgsr_bench.eval.generate``; returns generated tokens."""
    import torch
    from transformers import GenerationConfig

    from mgsr_bench.data.collate import left_pad
    from mgsr_bench.eval.generate import encode_prompts

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    encoded = sorted(encode_prompts(tokenizer, prompts, settings), key=len)
    tokens = 0
    for start in range(0, len(encoded), settings.batch_size):
        rows = encoded[start: start + settings.batch_size]
        ids, attn = left_pad(rows, tokenizer.pad_token_id)
        config = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=settings.temperature,
                                  max_new_tokens=settings.max_length - ids.shape[1],
                                  no_repeat_ngram_size=settings.no_repeat_ngram_size or None,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=config)
        for row in out[:, ids.shape[1]:].tolist():
            tokens += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return tokens


def ours(model, tokenizer, prompts: list[str], settings, seed: int) -> int:
    from mgsr_bench.eval.generate import generate

    texts = generate(model, tokenizer, prompts, settings, seed=seed)
    return sum(len(tokenizer(t, add_special_tokens=False).input_ids) + 1 for t in texts)  # + EOS, approximately


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "gpt2-124m"], default="tiny")
    parser.add_argument("--limit", type=int, default=64, help="prompts per shared set (default: 64)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import torch

    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.eval.generate import EvalSettings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prompts = shared_prompts(args.limit)
    settings = EvalSettings(batch_size=args.batch_size)
    rows = []
    print(f"device {device}; batch size {args.batch_size}; {args.limit} prompts per set; sampling, seed 10")
    for label, model, tokenizer in models(args.model, device):
        first = next(iter(prompts.values()))[:4]
        ours(model, tokenizer, first, settings, 0), hf_generate(model, tokenizer, first, settings, 0)  # warm-up
        for name, texts in prompts.items():
            figures = {}
            for impl, fn in (("mgsr-bench", ours), ("transformers", hf_generate)):
                _sync(device)
                start = time.perf_counter()
                tokens = fn(model, tokenizer, texts, settings, 10)
                _sync(device)
                seconds = time.perf_counter() - start
                figures[impl] = {"samples_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds,
                                 "seconds": seconds}
            ratio = figures["mgsr-bench"]["samples_per_s"] / figures["transformers"]["samples_per_s"]
            print(f"{label:20s} {name:9s} mgsr-bench {figures['mgsr-bench']['samples_per_s']:7.2f} samples/s "
                  f"({figures['mgsr-bench']['tokens_per_s']:7.0f} tok/s) | transformers "
                  f"{figures['transformers']['samples_per_s']:7.2f} samples/s "
                  f"({figures['transformers']['tokens_per_s']:7.0f} tok/s) | {ratio:.2f}x", flush=True)
            rows.append({"model": label, "set": name, "n": len(texts), "batch_size": args.batch_size,
                         "device": device, **figures})
            if args.json:  # after each set, so that a run cut short keeps what it measured
                write_atomic(args.json, json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
