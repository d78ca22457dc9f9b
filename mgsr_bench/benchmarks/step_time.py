"""Benchmark: time per training step of mgsr vs kd and distillm on the tiny pair, and MGSR's cost split.

    python -m mgsr_bench.benchmarks.step_time                 # tiny suite (built and cached on first use)
    python -m mgsr_bench.benchmarks.step_time --steps 40 --json step_time.json

Every configuration trains the tiny suite's SFT-initialised student for ``--steps`` optimiser steps
with the suite's training settings, after ``--warmup`` untimed steps (the difference of two runs
removes set-up and final validation). The sampling methods are forced to generate student samples
on *every* step (``init_threshold = 1`` with a replay buffer that never fills), so the figures are
the cost of a generation step, the only kind of step where SCRG runs; with the default schedule
only a fraction of steps generate.

MGSR's cost split: SCRG's own wall time is logged by every step that runs it (``scrg_seconds``);
DAC-KL and the span loss are timed forward + backward on the logits of one real training
micro-batch of the suite (the same ground-truth rows for each), next to the forward KL and SFT
terms they sit beside.

Two modes: at fixed weights (learning rate 1e-12) every method samples from the same SFT student, so
the ratios compare the methods' machinery on the same sample distribution; in training (the
suite's learning rate) each method's updates also change its samples' lengths, and the cost of
sampling, SCRG and the loss with them. Response tokens per step are printed beside each figure.

Run it alone: another torch process on the same cores distorts every figure.
"""

from __future__ import annotations

import argparse
import json
import time

FORCED = {"init_threshold": 1.0, "capacity": 10**9}
CONFIGS = {"kd": ("kd", {}), "distillm": ("distillm", FORCED), "mgsr": ("mgsr", FORCED)}
# fixed weights (lr 1e-12, as 0 is refused): every method samples from the same student, so the figures compare the
# methods' machinery; training: the suite's learning rate, where a method's updates also change
# how long its samples are (and so the cost of sampling, SCRG and the loss)
MODES = {"fixed weights": 1e-12, "training": None}


def time_config(method_name: str, options: dict, steps: int, warmup: int, suite, lr: float | None = None) -> dict:
    """Seconds per optimiser step, the share of student-sample steps, the mean SCRG seconds and the mean
    response tokens per step; ``lr`` replaces the suite's learning rate (0 keeps the weights fixed)."""
    import torch

    from mgsr_bench.config import train_config
    from mgsr_bench.data.collate import tokenize_records
    from mgsr_bench.methods import get_method
    from mgsr_bench.models import load_model
    from mgsr_bench.suite.build import load_suite_models
    from mgsr_bench.train import train

    tokenizer, teacher = load_suite_models(suite)
    train_ex = tokenize_records(suite.split("train")[:4096], tokenizer)
    valid = suite.split("valid")[:8]
    settings = {**suite.config.method_train, "val_metric": "loss", "val_size": 8}
    if lr is not None:
        settings["lr"] = lr
    times = []
    for n in (warmup, warmup + steps):
        torch.manual_seed(0)
        student = load_model(suite.student_init_dir)
        cfg = train_config({**settings, "steps": n, "eval_every": 10**6})
        start = time.perf_counter()
        result = train(student, teacher, tokenizer, get_method(method_name, **options), train_ex, valid,
                       tokenize_records(valid, tokenizer), cfg, desc=f"{method_name} {n}")
        times.append(time.perf_counter() - start)
    timed = result.history[warmup:]
    return {"seconds_per_step": (times[1] - times[0]) / steps,
            "student_steps": sum(h["source"] == "student" for h in timed) / len(timed),
            "scrg_seconds": sum(h.get("scrg_seconds", 0.0) for h in timed) / len(timed),
            "tokens_per_step": sum(h["tokens"] for h in timed) / len(timed)}


def time_loss_terms(suite, repeats: int = 5) -> dict:
    """Forward + backward seconds of each MGSR term on one real micro-batch's response logits."""
    import torch

    from mgsr_bench.data.collate import collate, token_batch, tokenize_records
    from mgsr_bench.losses import divergences as D
    from mgsr_bench.losses.span import span_pair_losses
    from mgsr_bench.methods import get_method
    from mgsr_bench.methods.mgsr import PAIRS
    from mgsr_bench.models import load_model
    from mgsr_bench.suite.build import load_suite_models
    from mgsr_bench.train.loop import response_tokens

    tokenizer, teacher = load_suite_models(suite)
    student = load_model(suite.student_init_dir)
    method = get_method("mgsr")
    rows = method.annotate(tokenize_records(suite.split("train")[: suite.config.method_train["micro_batch"]],
                                            tokenizer), tokenizer)
    batch = collate(rows, tokenizer.pad_token_id)
    pairs = method.batch_counts(rows)[PAIRS]
    mask, tokens = token_batch(batch, {PAIRS: pairs, "tokens": response_tokens(rows)})
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        s_logits = student(**inputs).logits[mask][:, : len(tokenizer)]
        t_logits = teacher(**inputs).logits[mask][:, : len(tokenizer)]
    terms = {
        "sft": lambda s: D.cross_entropy(s, tokens.targets),
        "forward KL": lambda s: D.forward_kl(s, t_logits),
        "DAC-KL": lambda s: method.dac_term(s, t_logits, tokens),
        "span": lambda s: span_pair_losses(s, t_logits, tokens.joined, method.span_top_k, method.relation),
    }
    out = {}
    for name, fn in terms.items():
        best = float("inf")
        for _ in range(repeats):
            s = s_logits.clone().requires_grad_(True)
            start = time.perf_counter()
            fn(s).sum().backward()
            best = min(best, time.perf_counter() - start)
        out[name] = best
    method.step_stats()
    out["tokens"], out["pairs"] = int(mask.sum()), pairs
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    from mgsr_bench.suite.build import SUITES, ensure_suite

    suite = ensure_suite(SUITES["tiny"])
    rows: dict = {}
    for mode, lr in MODES.items():
        rows[mode] = {}
        print(f"{mode}:")
        for label, (method, options) in CONFIGS.items():
            r = rows[mode][label] = time_config(method, options, args.steps, args.warmup, suite, lr)
            print(f"  {label:10s} {r['seconds_per_step']:.3f} s/step, {r['tokens_per_step']:.0f} response tokens "
                  f"per step (student-sample steps: {r['student_steps']:.0%})", flush=True)
        full = rows[mode]["mgsr"]["seconds_per_step"]
        ratio = full / rows[mode]["distillm"]["seconds_per_step"]
        print(f"  mgsr / kd = {full / rows[mode]['kd']['seconds_per_step']:.2f}x; mgsr / distillm = {ratio:.2f}x "
              f"(target <= 2 at rounds = 1: {'met' if ratio <= 2 else 'NOT met'}); "
              f"SCRG {rows[mode]['mgsr']['scrg_seconds']:.3f} s ({rows[mode]['mgsr']['scrg_seconds'] / full:.0%})")
    full = rows["fixed weights"]["mgsr"]["seconds_per_step"]
    terms = time_loss_terms(suite)
    rows["loss_terms"] = terms
    print(f"share of mgsr's {full:.3f} s step at fixed weights:")
    scrg = rows["fixed weights"]["mgsr"]["scrg_seconds"]
    print(f"  SCRG (teacher pass + re-generation)  {scrg:.3f} s ({scrg / full:.0%})")
    for name in ("DAC-KL", "span"):
        print(f"  {name:32s} {terms[name]:.3f} s ({terms[name] / full:.0%}) "
              f"[forward KL in its place: {terms['forward KL']:.3f} s; sft term {terms['sft']:.3f} s]")
    print(f"  (loss terms timed forward + backward on one micro-batch: {terms['tokens']} response tokens, "
          f"{terms['pairs']} span pairs)")
    if args.json:
        from mgsr_bench.data.jsonl import write_atomic

        write_atomic(args.json, json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
