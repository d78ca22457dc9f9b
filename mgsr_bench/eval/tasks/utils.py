"""Metric hooks the tiny suite's lm-eval task YAMLs name with ``!function``."""

from mgsr_bench.eval.metrics import example_scores


def process_generation(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE-L F x 100 and exact match x 100 of one generation, as mgsr-bench's own evaluation scores them."""
    scores = example_scores([results[0].strip()], [doc["output"]])
    return {"rougeL": scores["rougeL"][0], "exact_match": scores["exact_match"][0]}
