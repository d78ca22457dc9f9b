"""Benchmark: peak memory and time of the naive vs the chunked distillation loss.

    python -m mgsr_bench.benchmarks.chunked_loss                  # CPU, V = 50257 and 151936
    python -m mgsr_bench.benchmarks.chunked_loss --device cuda    # on a GPU

Both paths compute the same thing from the last hidden states of B x T response tokens: the student
head's logits, the teacher head's logits (no grad), a method's token losses and the backward pass
into the student's hidden states and head weight. The naive path materialises full ``(B*T, V)``
logits; the chunked path (:func:`mgsr_bench.losses.chunked.chunked_linear_loss`) holds one chunk.

Each (path, vocabulary) runs in a fresh subprocess. Peak extra memory is the growth of the peak
resident set (CPU, ``ru_maxrss``) or of ``torch.cuda.max_memory_allocated`` (GPU) over the
inputs; time is the mean of ``--repeats`` forward+backward passes after the measured first one.
Prints one line per measurement and a summary of the ratios against their targets (chunked peak
<= 1/4 of naive, time <= 1.3x).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _peak_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(path: str, vocab: int, tokens: int, hidden: int, teacher_hidden: int, chunk: int, method: str,
            device: str, repeats: int) -> dict:
    """One measurement in this process (call it in a fresh process for a clean memory peak)."""
    import torch

    from mgsr_bench.data.collate import TokenBatch
    from mgsr_bench.losses.chunked import chunked_linear_loss
    from mgsr_bench.methods import get_method

    torch.manual_seed(0)
    token_losses = get_method(method).token_losses
    h = torch.randn(tokens, hidden, device=device, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=device) * 0.02).requires_grad_()
    th = torch.randn(tokens, teacher_hidden, device=device)
    tw = torch.randn(vocab, teacher_hidden, device=device) * 0.02
    y = TokenBatch(torch.randint(0, vocab, (tokens,), device=device))

    def step() -> None:
        if path == "naive":
            with torch.no_grad():
                teacher_logits = th @ tw.T
            loss = token_losses(h @ w.T, teacher_logits, y).sum()
        else:
            loss = chunked_linear_loss(h, w, th, tw, y, token_losses, chunk)
        loss.backward()
        h.grad = w.grad = None

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _peak_bytes(device)
    step()
    peak_extra = _peak_bytes(device) - base
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"path": path, "vocab": vocab, "tokens": tokens, "device": device, "method": method,
            "peak_extra_gib": peak_extra / 2**30, "seconds": sum(times) / len(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", default="50257,151936", help="vocabulary sizes (GPT-2, Qwen2.5)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=768, help="student hidden size (GPT-2 124M: 768)")
    parser.add_argument("--teacher-hidden", type=int, default=1600, help="teacher hidden size (GPT-2 XL: 1600)")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--method", default="kd")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement, print JSON
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device here: run with --device cpu")
    tokens = args.batch * args.seq
    if args.one:
        path, vocab = args.one.split(":")
        print(json.dumps(measure(path, int(vocab), tokens, args.hidden, args.teacher_hidden, args.chunk,
                                 args.method, args.device, args.repeats)))
        return 0

    results = []
    for vocab in (int(v) for v in args.vocab.split(",")):
        for path in ("naive", "chunked"):
            cmd = [sys.executable, "-m", "mgsr_bench.benchmarks.chunked_loss", "--one", f"{path}:{vocab}",
                   *(f"--{k}={v}" for k, v in (("batch", args.batch), ("seq", args.seq), ("hidden", args.hidden),
                                               ("teacher-hidden", args.teacher_hidden), ("chunk", args.chunk),
                                               ("method", args.method), ("device", args.device),
                                               ("repeats", args.repeats)))]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                reason = "killed (out of memory?)" if proc.returncode < 0 else proc.stderr.strip().splitlines()[-1]
                row = {"path": path, "vocab": vocab, "tokens": tokens, "error": reason}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(row)
            shown = (f"peak extra {row['peak_extra_gib']:.2f} GiB, {row['seconds']:.2f} s/step"
                     if "error" not in row else row["error"])
            print(f"{path:8s} V={vocab:6d} BxT={args.batch}x{args.seq} {args.device}: {shown}", flush=True)
    print("\nsummary (chunked / naive):")
    for vocab in (int(v) for v in args.vocab.split(",")):
        naive, chunked = (next(r for r in results if r["vocab"] == vocab and r["path"] == p) for p in ("naive", "chunked"))
        if "error" in naive or "error" in chunked:
            print(f"  V={vocab}: incomplete ({naive.get('error') or chunked.get('error')})")
            continue
        mem, speed = chunked["peak_extra_gib"] / naive["peak_extra_gib"], chunked["seconds"] / naive["seconds"]
        print(f"  V={vocab}: memory {mem:.3f}x (target <= 0.25: {'met' if mem <= 0.25 else 'NOT met'}), "
              f"time {speed:.2f}x (target <= 1.3: {'met' if speed <= 1.3 else 'NOT met'})")
    if args.json:
        from mgsr_bench.data.jsonl import write_atomic

        write_atomic(args.json, json.dumps(results, indent=2))
    # the naive path running out of memory is a finding; the chunked one failing is a failure
    return 1 if any("error" in r for r in results if r["path"] == "chunked") else 0


if __name__ == "__main__":
    sys.exit(main())
