"""Benchmark: how far each divergence on a cached top-k teacher is from the exact one, as k grows.

    python -m mgsr_bench.benchmarks.cache_error [--examples 256] [--ks 1,4,16,64,256]

On the tiny suite's shipped teacher and SFT-init student (the pair and the starting point of every
distillation row), over the first ``--examples`` training examples, for every divergence of
:mod:`mgsr_bench.losses.divergences` and both conventions for the rest (one rest bucket;
the k ids renormalised): the relative error of the token mean, ``|cached - exact| / exact``, and
the mean absolute error per token relative to the exact token mean; likewise MGSR's DAC-KL (a fixed
band, with the default ``outside: drop`` and with ``bucket``) and span terms, which read the cache's
completion (the rest spread evenly, :meth:`TopK.as_logits`). The teacher's log-probabilities
are stored in float16, as ``cache-teacher`` stores them by default. Prints a markdown table (the one
in docs/divergences.md) and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any, Callable

import torch

from mgsr_bench.data.collate import TokenBatch
from mgsr_bench.losses import divergences as D

DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "forward KL (kd)": D.forward_kl,
    "reverse KL (rkl)": D.reverse_kl,
    "JSD beta=0.5 (jsd)": functools.partial(D.generalized_jsd, beta=0.5),
    "TVD (tvd)": D.total_variation,
    "skew forward KL a=0.1 (sfkl)": functools.partial(D.skew_forward_kl, alpha=0.1),
    "skew reverse KL a=0.1 (srkl)": functools.partial(D.skew_reverse_kl, alpha=0.1),
    "AB divergence 0.5/0.5 (abkd)": functools.partial(D.alpha_beta_divergence, alpha=0.5, beta=0.5),
}


def _mgsr_terms(tokens: TokenBatch) -> dict[str, Callable[..., torch.Tensor]]:
    """MGSR's teacher-reading terms on ``tokens`` (ground-truth rows, span pairs marked), each alone."""
    from mgsr_bench.methods.mgsr import MGSR

    alone = {"sft_weight": 0.0, "dac_weight": 0.0, "span_weight": 0.0}
    terms = {"DAC-KL band 0.1-0.9 (mgsr)": MGSR(**{**alone, "dac_weight": 1.0}, subnet="fixed"),
             "DAC-KL outside bucket (mgsr-dackl-bucket)": MGSR(**{**alone, "dac_weight": 1.0}, subnet="fixed",
                                                               outside="bucket"),
             "span hadamard (mgsr)": MGSR(**{**alone, "span_weight": 1.0})}
    return {name: functools.partial(method.token_losses, tokens=tokens) for name, method in terms.items()}


@torch.no_grad()
def _logits(examples: int) -> tuple[torch.Tensor, torch.Tensor, int, TokenBatch]:
    """Student and teacher logits at every response position of the first ``examples`` training examples,
    and those positions' targets with MGSR's span pairs marked."""
    from mgsr_bench.data.collate import JOINED, collate, token_batch, tokenize_records
    from mgsr_bench.methods.mgsr import PAIRS, MGSR
    from mgsr_bench.models import load_model
    from mgsr_bench.pipeline import suite_config
    from mgsr_bench.suite.build import ensure_suite, load_suite_models

    suite = ensure_suite(suite_config(False))
    tokenizer, teacher = load_suite_models(suite)
    student = load_model(suite.student_init_dir).eval()
    rows = MGSR().annotate(tokenize_records(suite.split("train")[:examples], tokenizer), tokenizer)
    vocab = len(tokenizer)
    out: list[list[torch.Tensor]] = [[], [], [], []]
    for start in range(0, len(rows), 32):
        batch = collate(rows[start:start + 32], tokenizer.pad_token_id)
        mask, tokens = token_batch(batch)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        for i, model in enumerate((student, teacher)):
            out[i].append(model(**inputs).logits[mask][:, :vocab].float())
        out[2].append(tokens.targets)
        out[3].append(tokens.joined if tokens.joined is not None else torch.zeros_like(tokens.targets, dtype=torch.bool))
    joined = torch.cat(out[3])
    tokens = TokenBatch(torch.cat(out[2]), marks={JOINED: joined},
                        totals={"tokens": joined.numel(), PAIRS: int(joined.sum())})
    return torch.cat(out[0]), torch.cat(out[1]), vocab, tokens


def measure(examples: int, ks: list[int]) -> dict[str, Any]:
    student, teacher, vocab, tokens = _logits(examples)
    logprobs = torch.log_softmax(teacher, -1)
    results: dict[str, Any] = {"tokens": student.shape[0], "vocab": vocab, "rows": []}
    for name, f in {**DIVERGENCES, **_mgsr_terms(tokens)}.items():
        exact = f(student, teacher)
        for k in ks:
            values, ids = logprobs.topk(k, -1)
            for rest in ("bucket", "renormalize"):
                cached = f(student, D.TopK(ids.int(), values.half(), 1.0, rest == "renormalize"))
                results["rows"].append({"divergence": name, "k": k, "rest": rest, "exact": exact.mean().item(),
                                        "relative_error": ((cached.mean() - exact.mean()).abs()
                                                           / exact.mean()).item(),
                                        "token_error": ((cached - exact).abs().mean() / exact.mean()).item()})
    return results


def table(results: dict[str, Any], ks: list[int]) -> str:
    """Relative error of the token mean per divergence (rows) and k (columns), bucket | renormalised."""
    lines = ["| divergence (exact token mean) | " + " | ".join(f"k = {k}" for k in ks) + " |",
             "|---|" + "---|" * len(ks)]
    by = {(r["divergence"], r["k"], r["rest"]): r for r in results["rows"]}
    for name in dict.fromkeys(r["divergence"] for r in results["rows"]):
        cells = [f"{by[name, k, 'bucket']['relative_error']:.1e} / {by[name, k, 'renormalize']['relative_error']:.1e}"
                 for k in ks]
        lines.append(f"| {name} ({by[name, ks[0], 'bucket']['exact']:.3f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--ks", default="1,4,16,64,256")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    results = measure(args.examples, ks)
    print(f"{results['tokens']} response tokens of the tiny suite's training set, V = {results['vocab']}; "
          "relative error of the token mean, rest bucket / renormalised\n")
    print(table(results, ks))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
