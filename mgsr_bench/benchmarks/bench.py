"""Performance benchmark: training-step and generation throughput, peak memory and MFU per method.

    mgsr-bench bench                                  # CPU: small GPT-2 shapes with V = 50257
    mgsr-bench bench --shape gpt2-xl-gpt2 --json out.json   # GPU: GPT-2 1.5B -> 124M, bf16
    mgsr-bench bench --trl                            # also TRL's GKDTrainer on the same pair and batch
    mgsr-bench bench --methods sft,kd --teacher-cache 64   # also kd reading a top-64 teacher cache

Models are random-init from their shapes (no download); data is random token ids, ``seq_len / 2``
prompt and ``seq_len / 2`` response tokens per row. Each method runs in a fresh process (so each
peak is its own) for ``--warmup`` untimed and ``--steps`` timed optimiser steps of ``micro_batch``
rows; on-policy methods sample on every step (lambda = 1), generating ``seq_len / 2`` tokens.

Figures per method: training tokens per second (B x T / step time), generation tokens per second
(one batch of B prompts, measured apart), peak memory (GPU: ``max_memory_allocated``, and
``max_memory_reserved`` beside it; CPU: peak resident memory added by the run), and model FLOP
utilisation, ``(2 N_teacher [when the teacher runs] + 6 N_student) x tokens / time / peak`` with the device's dense bf16 peak (H100 and
H200 SXM: 989 TFLOP/s; their PCIe and NVL cards less, see ``PEAK_TFLOPS``; none on CPU). TRL's
GKDTrainer (``trl.experimental.gkd``, optional) gets the same models, data, batch, beta (0.5) and
lambda (1.0, as ``gkd``'s step here), with gradient checkpointing off as here (TRL's default is
on), and the ratio of step time and of peak memory is printed. The JSON file is rewritten after
each method, so a run cut short keeps what it measured. With ``--teacher-cache K`` every method
that can read a cache (:mod:`mgsr_bench.teacher_cache`) also runs as ``METHOD+cache``: the cache of
its rows at top-K is written first (untimed), the steps then read it instead of running the teacher;
``sft`` joins the run as the floor (the same student, no teacher), each step time is printed as a
ratio to its, and the cache's size per 1,000 response tokens is given.

Run it alone: another process on the same device distorts every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from mgsr_bench.cli.parsing import OneLineParser
from mgsr_bench.errors import UserError, unknown_name
from mgsr_bench.outputs import check_output_file

SHAPES = {
    # name: (teacher GPT-2 config, student GPT-2 config), vocabulary 50257
    "cpu-small": ({"n_embd": 256, "n_layer": 4, "n_head": 4}, {"n_embd": 128, "n_layer": 2, "n_head": 2}),
    "gpt2-xl-gpt2": ({"n_embd": 1600, "n_layer": 48, "n_head": 25}, {"n_embd": 768, "n_layer": 12, "n_head": 12}),
}
# dense bf16 TFLOP/s per the vendors' data sheets, by a substring of torch.cuda.get_device_name(): the
# first that matches counts, so the PCIe and NVL cards (lower clocks and power) come before their SXM kin
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0), ("H200", 989.0),
               ("A100", 312.0))
ONLINE = {"gkd": {"lmbda": 1.0}, "distillm": {"init_threshold": 1.0, "capacity": 10 ** 9},
          "mgsr": {"init_threshold": 1.0, "capacity": 10 ** 9}}


def _models(shape: str, device: str, dtype):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    t_cfg, s_cfg = SHAPES[shape]
    torch.manual_seed(0)
    with torch.device(device):  # initialised where they run: a 1.5B model's init on the host takes seconds
        teacher = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=1024, **t_cfg)).to(dtype)
        student = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=1024, **s_cfg))
    if device == "cuda":  # the peaks are training's: not the fp32 teacher built before its cast (6 GiB at 1.5B)
        torch.cuda.reset_peak_memory_stats()
    return teacher.eval(), student


def _tokenizer():
    """A 50257-token word-level tokenizer for the random-id data: only the ids matter, but the harness
    (MGSR's span extraction decodes responses) and TRL's trainer want a real tokenizer object."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(50257)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")))
    tok.eos_token = tok.pad_token = "t50256"
    return tok


def _rows(n: int, seq_len: int):
    import torch

    from mgsr_bench.data.collate import Example

    gen = torch.Generator().manual_seed(0)
    half = seq_len // 2
    return [Example(torch.randint(0, 50256, (half,), generator=gen).tolist(),
                    torch.randint(0, 50256, (half,), generator=gen).tolist()) for _ in range(n)]


def _peaks(device: str, start_rss: int) -> dict[str, float]:
    """Peak memory in GiB; on GPUs also the allocator's peak reservation (allocated plus its cached,
    fragmented blocks: nearer what the planner's allowance covers, less the CUDA context)."""
    import resource

    import torch

    if device == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2 ** 30}
    return {"peak_memory_gib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start_rss) / 2 ** 30}


def _cached_rows(teacher, rows, tokenizer, k: int) -> tuple[Any, list, float]:
    """The rows with a top-``k`` cache of ``teacher`` attached, how it is read, and its MB per 1,000 response tokens."""
    import tempfile
    from pathlib import Path

    from mgsr_bench.data.collate import token_digest
    from mgsr_bench.teacher_cache import (CacheKey, CacheReading, footprint, load_cache, state_digest, with_cached_rows,
                                          write_cache)

    key = CacheKey(state_digest(teacher), token_digest(rows), len(tokenizer), k, 1.0, "float16")
    with tempfile.TemporaryDirectory(prefix="mgsr-bench-cache-") as tmp:
        folder = write_cache(teacher, rows, Path(tmp) / "cache", key, tokenizer.pad_token_id)
        cached = with_cached_rows(rows, load_cache(folder, key))
        per_1k = footprint(folder)[1]
    return CacheReading(key), cached, per_1k


def run_one(method: str, shape: str, micro_batch: int, seq_len: int, steps: int, warmup: int,
            cache_k: int | None = None) -> dict[str, Any]:
    """One method in this process (reading a top-``cache_k`` teacher cache when given): figures as a dict."""
    import resource

    import torch

    from mgsr_bench.config import train_config
    from mgsr_bench.methods import get_method
    from mgsr_bench.sampling.decode import decode
    from mgsr_bench.train import train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    teacher, student = _models(shape, device, dtype)
    n_teacher, n_student = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    rows = _rows(micro_batch * (steps + warmup + 1), seq_len)
    tokenizer = _tokenizer()
    reading, cache_mb = None, None
    if cache_k is not None:
        reading, rows, cache_mb = _cached_rows(teacher, rows, tokenizer, cache_k)
    settings = {"micro_batch": micro_batch, "eval_every": 10 ** 6, "val_metric": "loss", "val_size": micro_batch,
                "gen_max_new_tokens": seq_len // 2, "mixed_precision": "auto"}
    train(student, teacher, tokenizer, get_method(method, **ONLINE.get(method, {})), rows, [], rows[:micro_batch],
          train_config({**settings, "steps": 1}), desc="cold start", teacher_cache=reading)  # untimed: first kernels
    times = []
    for n in (warmup, warmup + steps):
        cfg = train_config({**settings, "steps": n})
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        train(student, teacher, tokenizer, get_method(method, **ONLINE.get(method, {})), rows, [],
              rows[:micro_batch], cfg, desc=f"bench {method}", teacher_cache=reading)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    step = (times[1] - times[0]) / steps
    tokens = micro_batch * seq_len
    prompts = [r.prompt_ids for r in rows[:micro_batch]]
    began = time.perf_counter()
    out = decode(student, prompts, -1, 50256, seq_len // 2, 50257)  # EOS -1: every row runs the full length
    if device == "cuda":
        torch.cuda.synchronize()
    gen_tokens = sum(len(t) for t in out.tokens) / (time.perf_counter() - began)
    result = {"method": method + ("+cache" if cache_k is not None else ""), "shape": shape,
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "micro_batch": micro_batch, "seq_len": seq_len, "n_teacher": n_teacher, "n_student": n_student,
              "seconds_per_step": step, "train_tokens_per_s": tokens / step, "generation_tokens_per_s": gen_tokens,
              **_peaks(device, start_rss)}
    peak = next((v for k, v in PEAK_TFLOPS if k in result["device"]), None)
    flops = (6 * n_student + (0 if cache_k is not None or method == "sft" else 2 * n_teacher)) * tokens
    result["mfu"] = flops / step / (peak * 1e12) if peak else None
    if cache_k is not None:
        result.update(cache_k=cache_k, cache_mb_per_1k_tokens=cache_mb)
    return result


def _check_trl() -> None:
    """One line before any method runs when TRL's GKDTrainer (or datasets, which it needs) is missing."""
    try:
        import datasets  # noqa: F401
        import trl.experimental.gkd  # noqa: F401
    except ImportError as e:
        raise UserError(f"--trl needs TRL's GKDTrainer (trl.experimental.gkd) and datasets ({e}): "
                        "pip install -e '.[bench]' in the clone, or drop --trl") from None


def run_trl(shape: str, micro_batch: int, seq_len: int, steps: int, warmup: int) -> dict[str, Any]:
    """TRL's GKDTrainer on the same pair, batch, beta and lambda; figures as a dict."""
    import resource

    import torch

    _check_trl()
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    teacher, student = _models(shape, device, torch.bfloat16 if device == "cuda" else torch.float32)
    rows = _rows(micro_batch * (steps + warmup + 1), seq_len)
    data = Dataset.from_list([{"input_ids": r.prompt_ids + r.response_ids, "attention_mask": [1] * seq_len,
                               "labels": [-100] * len(r.prompt_ids) + r.response_ids,
                               "prompts": r.prompt_ids, "prompt_attention_mask": [1] * len(r.prompt_ids)}
                              for r in rows])
    times = []

    class Timer:  # a callback recording each optimiser step's end
        def __getattr__(self, name):
            return lambda *a, **k: None

        def on_step_end(self, *args, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:  # equal lengths: no padding needed
        return {k: torch.tensor([row[k] for row in batch]) for k in batch[0]}

    # gradient_checkpointing off as in the harness (TRL's default is on, which also turns the KV cache
    # off for its generation), and the student's dropout kept as the harness keeps it (TRL's default
    # turns it off): both sides then do the same work per step
    config = GKDConfig(output_dir="/tmp/mgsr-bench-trl", per_device_train_batch_size=micro_batch,
                       gradient_checkpointing=False, disable_dropout=False,
                       max_steps=steps + warmup, lmbda=1.0, beta=0.5, temperature=1.0,
                       max_new_tokens=seq_len // 2, learning_rate=1e-4, logging_steps=10 ** 6, save_strategy="no",
                       report_to=[], bf16=device == "cuda", dataset_kwargs={"skip_prepare_dataset": True},
                       remove_unused_columns=False)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=data,
                         data_collator=collate, processing_class=_tokenizer(), callbacks=[Timer()])
    trainer.train()
    step = (times[-1] - times[warmup - 1]) / steps
    return {"method": "trl-gkd", "shape": shape, "seconds_per_step": step,
            "train_tokens_per_s": micro_batch * seq_len / step, **_peaks(device, start_rss)}


def _with_cached(names: list[str], k: int) -> list[str]:
    """``sft`` first (the floor), and each method that reads a teacher cache on every batch (it samples none)
    followed by its cached run."""
    from mgsr_bench.methods import get_method
    from mgsr_bench.teacher_cache import can_read

    if not 1 <= k <= 50257:
        raise UserError(f"--teacher-cache takes k within 1..50257 (the vocabulary), got {k}")
    out = ["sft"] + [n for n in names if n != "sft"]
    def every_batch(name: str) -> bool:
        method = get_method(name)
        return can_read(method) and not method.source_spec().samples

    return [m for name in out for m in ([name, name + "+cache"] if every_batch(name) else [name])]


def _print_cache_ratios(by_name: dict[str, dict[str, Any]]) -> None:
    floor = by_name["sft"]["seconds_per_step"]
    for name, r in by_name.items():
        if name.endswith("+cache") and name.removesuffix("+cache") in by_name:
            live = by_name[name.removesuffix("+cache")]["seconds_per_step"]
            print(f"{name}: step {r['seconds_per_step'] / floor:.2f}x sft's (live teacher: {live / floor:.2f}x); "
                  f"cache {r['cache_mb_per_1k_tokens']:.3f} MB per 1,000 response tokens at k = {r['cache_k']}")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="mgsr-bench bench", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), help="default: gpt2-xl-gpt2 on a GPU, cpu-small otherwise")
    parser.add_argument("--methods", default="kd,gkd,distillm,mgsr")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--trl", action="store_true", help="also TRL's GKDTrainer (optional dependency)")
    parser.add_argument("--teacher-cache", type=int, metavar="K",
                        help="also each method that can, reading a top-K teacher cache; sft joins as the floor")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method in this process
    args = parser.parse_args(argv)
    if min(args.steps, args.warmup, args.micro_batch) < 1:
        parser.error("--steps, --warmup and --micro-batch must be >= 1")
    if not (4 <= args.seq_len <= 1024 and args.seq_len % 2 == 0):  # half prompt, half response; GPT-2's positions
        parser.error(f"--seq-len must be even and within 4..1024 (GPT-2's positions), got {args.seq_len}")

    import torch

    shape = args.shape or ("gpt2-xl-gpt2" if torch.cuda.is_available() else "cpu-small")
    if args.one:
        method, cached = args.one.removesuffix("+cache"), args.one.endswith("+cache")
        run = run_trl if args.one == "trl-gkd" else (
            lambda *a: run_one(method, *a, cache_k=args.teacher_cache if cached else None))
        print("RESULT " + json.dumps(run(shape, args.micro_batch, args.seq_len, args.steps, args.warmup)))
        return 0
    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.methods import available_methods

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = available_methods()
    if not names:
        raise UserError(f"--methods names no method (choose from {', '.join(known)})")
    for name in names:  # before the first method runs for minutes
        if name not in known:
            raise unknown_name("method", name, known)
    if args.json:
        check_output_file(args.json, "--json")
    if args.teacher_cache is not None:
        names = _with_cached(names, args.teacher_cache)
    if args.trl:  # right after gkd, its peer: a run cut short still has the pair
        _check_trl()
        names.insert(names.index("gkd") + 1 if "gkd" in names else len(names), "trl-gkd")
    results = []
    for name in names:
        cmd = [sys.executable, "-m", "mgsr_bench.benchmarks.bench", "--one", name, "--shape", shape,
               "--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
        cmd += ["--teacher-cache", str(args.teacher_cache)] if args.teacher_cache is not None else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(line[len("RESULT "):])
        results.append(r)
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        gen = f", generation {r['generation_tokens_per_s']:.0f} tok/s" if "generation_tokens_per_s" in r else ""
        print(f"{name:10s} {r['seconds_per_step']:.3f} s/step, train {r['train_tokens_per_s']:.0f} tok/s{gen}, "
              f"peak {r['peak_memory_gib']:.2f} GiB{mfu}", flush=True)
        if args.json:  # after each method: a run cut short still leaves the figures it measured
            write_atomic(args.json, json.dumps(results, indent=2))
    by_name = {r["method"]: r for r in results}
    if args.teacher_cache is not None and "sft" in by_name:
        _print_cache_ratios(by_name)
    if "trl-gkd" in by_name and "gkd" in by_name:
        ours, trl = by_name["gkd"], by_name["trl-gkd"]
        print(f"gkd vs TRL GKDTrainer: step time {ours['seconds_per_step'] / trl['seconds_per_step']:.2f}x, "
              f"peak memory {ours['peak_memory_gib'] / trl['peak_memory_gib']:.2f}x")
    return 0 if len(results) == len(names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
