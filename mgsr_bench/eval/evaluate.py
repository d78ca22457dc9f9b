"""Score a model on several datasets over several sampling seeds."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mgsr_bench.config import DEFAULT_SEEDS
from mgsr_bench.eval.generate import decoding_config, generate
from mgsr_bench.eval.metrics import corpus_scores, exact_match



def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   datasets: dict[str, list[dict[str, Any]]], seeds: Sequence[int] = DEFAULT_SEEDS,
                   greedy: bool = False, batch_size: int = 64, max_new_tokens: int = 64,
                   no_repeat_ngram_size: int = 6, desc: str = "eval") -> dict[str, Any]:
    """Generate and score every dataset once per seed (once in all when ``greedy``).

    Returns, per dataset: ``per_seed`` (ROUGE-L, exact match and, where records carry a
    ``family``, per-family exact match, all x 100), and ``rougeL`` / ``exact_match`` summaries
    (mean and sample std over seeds).
    """
    gen_config = decoding_config(tokenizer, max_new_tokens, greedy, no_repeat_ngram_size=no_repeat_ngram_size)
    run_seeds = [seeds[0]] if greedy else list(seeds)
    results: dict[str, Any] = {}
    for name, records in datasets.items():
        prompts = [r["prompt"] for r in records]
        refs = [r["output"] for r in records]
        per_seed: dict[str, dict[str, Any]] = {}
        for seed in run_seeds:
            preds = generate(model, tokenizer, prompts, gen_config, batch_size, seed=seed,
                             progress=f"{desc} {name} seed {seed}")
            scores: dict[str, Any] = corpus_scores(preds, refs)
            families: dict[str, list[float]] = defaultdict(list)
            for r, pred in zip(records, preds):
                if "family" in r:
                    families[r["family"]].append(exact_match(pred, r["output"]))
            if families:
                scores["family_exact_match"] = {f: 100 * statistics.fmean(v) for f, v in sorted(families.items())}
            scores["examples"] = [{"prediction": p} for p in preds[:3]]
            per_seed[str(seed)] = scores
        results[name] = {
            "n": len(records),
            "per_seed": per_seed,
            "rougeL": _summary([s["rougeL"] for s in per_seed.values()]),
            "exact_match": _summary([s["exact_match"] for s in per_seed.values()]),
        }
    return results
