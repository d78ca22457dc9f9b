"""Score a model on several datasets over several sampling seeds."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mgsr_bench.data.jsonl import records_text, write_atomic
from mgsr_bench.eval.generate import EvalSettings, generate
from mgsr_bench.eval.metrics import bootstrap_ci, example_scores


def examples_digest(records: list[dict[str, Any]]) -> str:
    """SHA-256 (16 hex digits) of the evaluated records: rows scored on other examples (another
    filter, another file version) are not one benchmark, and ``n`` alone does not show it."""
    return hashlib.sha256(records_text(records).encode()).hexdigest()[:16]


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: EvalSettings) -> str:
    """What every cached generation of this model depends on: the weights (two sums per tensor), the
    tokenizer and the decoding settings; each dataset's key adds its prompts."""
    import torch

    with torch.no_grad():
        weights = [repr(float(p.double().sum())) + "/" + repr(float(p.double().abs().sum())) for p in model.parameters()]
    return _sha({"weights": weights, "vocab": len(tokenizer), "eos": tokenizer.eos_token_id,
                 "special": tokenizer.all_special_tokens, "settings": {**settings.as_dict(), "seeds": None}})


def _cached_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                     settings: EvalSettings, seed: int, progress: str, cache: Path | None, key: str) -> list[str]:
    """Generations for one (dataset, seed), read from ``cache`` when a finished one with ``key`` is there."""
    if cache is not None and cache.exists():
        try:
            saved = json.loads(cache.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = None  # a torn file cannot happen (atomic writes), but a foreign one is just regenerated
        if isinstance(saved, dict) and saved.get("key") == key and len(saved.get("predictions", [])) == len(prompts):
            return saved["predictions"]
    preds = generate(model, tokenizer, prompts, settings, seed=seed, progress=progress)
    if cache is not None:
        write_atomic(cache, json.dumps({"key": key, "predictions": preds}))
    return preds


def evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   datasets: dict[str, list[dict[str, Any]]], settings: EvalSettings,
                   desc: str = "eval", cache_dir: Path | None = None) -> dict[str, Any]:
    """Generate and score every dataset once per seed (once in all when ``greedy``).

    Returns, per dataset: ``per_seed`` (ROUGE-L, exact match and, where records carry a
    ``family``, both per family as ``family_rougeL`` and ``family_exact_match``, all x 100), and
    ``rougeL`` / ``exact_match`` summaries:
    mean and sample std over seeds, and ``ci95``, a percentile bootstrap 95% interval of the mean
    over examples (each example's score averaged over the seeds; 1000 resamples, fixed seed).

    With ``cache_dir``, each (dataset, seed)'s generations are kept there as they finish
    (``<dataset>-<seed>.json``, keyed by :func:`fingerprint` and the prompts), so an interrupted run
    again redoes only what had not finished.
    """
    run_seeds = [settings.seeds[0]] if settings.greedy else list(settings.seeds)
    model_key = fingerprint(model, tokenizer, settings) if cache_dir is not None else ""  # one pass over the weights
    results: dict[str, Any] = {}
    for name, records in datasets.items():
        prompts = [r["prompt"] for r in records]
        key = _sha({"model": model_key, "prompts": prompts}) if cache_dir is not None else ""
        refs = [r["output"] for r in records]
        per_seed: dict[str, dict[str, Any]] = {}
        per_example: dict[str, list[list[float]]] = {"rougeL": [], "exact_match": []}
        for seed in run_seeds:
            preds = _cached_generate(model, tokenizer, prompts, settings, seed, f"{desc} {name} seed {seed}",
                                     cache_dir / f"{name}-{seed}.json" if cache_dir is not None else None, key)
            values = example_scores(preds, refs)
            for metric, v in values.items():
                per_example[metric].append(v)
            scores: dict[str, Any] = {metric: statistics.fmean(v) if v else 0.0 for metric, v in values.items()}
            by_family: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for i, r in enumerate(records):
                if "family" in r:
                    for metric, v in values.items():
                        by_family[metric][r["family"]].append(v[i])
            for metric, families in by_family.items():
                scores[f"family_{metric}"] = {f: statistics.fmean(v) for f, v in sorted(families.items())}
            scores["examples"] = [{"prediction": p} for p in preds[:3]]
            per_seed[str(seed)] = scores
        results[name] = {
            "n": len(records),
            "data_sha256": examples_digest(records),
            "per_seed": per_seed,
        }
        authors = sorted({str(r["reference_model"]) for r in records if "reference_model" in r})
        if authors:  # FastChat answer files name the model that wrote each reference
            results[name]["reference_models"] = authors
        for metric in ("rougeL", "exact_match"):
            seed_mean = [statistics.fmean(col) for col in zip(*per_example[metric])]  # per example
            results[name][metric] = {**_summary([s[metric] for s in per_seed.values()]),
                                     "ci95": list(bootstrap_ci(seed_mean))}
    return results
