"""ROUGE-L and exact match, computed as MiniLLM's ``rouge_metric.py`` computes them.

ROUGE-L is ``rouge_score.RougeScorer(['rougeL'], use_stemmer=True)``'s F-measure, the maximum over
the references of an example, averaged over examples and multiplied by 100. Exact match compares
normalised strings: SQuAD's normalisation without its removal of articles (lower case, no punctuation,
single spaces), as ``rouge_metric.py`` says of itself, so "went to a farm" does not match "went to the farm".
"""

from __future__ import annotations

import string
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer


_PUNCTUATION = frozenset(string.punctuation)


@lru_cache(maxsize=1)
def _scorer() -> RougeScorer:
    # imported here, not at the top: rouge_score brings nltk (with scikit-learn and scipy where they
    # are installed), over a second of start-up for every training process that never scores
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _refs(references: str | Sequence[str]) -> list[str]:
    return [references] if isinstance(references, str) else list(references)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F-measure in [0, 1], maximised over the references."""
    return max(_scorer().score(ref, prediction)["rougeL"].fmeasure for ref in _refs(references))


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace (articles stay, as in MiniLLM)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(text.split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in _refs(references)))


def example_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, list[float]]:
    """Per-example ROUGE-L and exact match, both x 100."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return {"rougeL": [100 * rouge_l(p, r) for p, r in zip(predictions, references)],
            "exact_match": [100 * exact_match(p, r) for p, r in zip(predictions, references)]}


def corpus_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-L and exact match over examples, both x 100."""
    per_example = example_scores(predictions, references)
    return {k: sum(v) / max(len(v), 1) for k, v in per_example.items()}


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (examples resampled with replacement)."""
    if not values:
        return (0.0, 0.0)
    data = np.asarray(values, dtype=np.float64)
    means = data[np.random.default_rng(seed).integers(0, len(data), (resamples, len(data)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
