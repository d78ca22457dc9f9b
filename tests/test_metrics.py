import pytest
from rouge_score import rouge_scorer

from mgsr_bench.eval.metrics import corpus_scores, exact_match, normalize_answer, rouge_l

PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("Tom has 41 apples now.", "Tom has 14 apples now."),
    ("running quickly", "runs quick"),
    ("", "something"),
]


@pytest.mark.parametrize("pred,ref", PAIRS)
def test_rouge_l_equals_rouge_score(pred, ref):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert rouge_l(pred, ref) == scorer.score(ref, pred)["rougeL"].fmeasure


def test_rouge_l_max_over_references():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    refs = ["a totally different answer", "the cat sat on the mat"]
    expected = max(scorer.score(r, "the cat sat on a mat")["rougeL"].fmeasure for r in refs)
    assert rouge_l("the cat sat on a mat", refs) == expected
    assert expected > scorer.score(refs[0], "the cat sat on a mat")["rougeL"].fmeasure


def test_stemming_is_on():
    assert rouge_l("running dogs", "run dog") == 1.0


def test_corpus_scores_scale_and_exact_match():
    scores = corpus_scores(["Tom has 41 apples now.", "Odd."], ["Tom has 41 apples now", ["even", "odd"]])
    assert scores["exact_match"] == 100.0
    assert scores["rougeL"] == pytest.approx(100.0)
    assert corpus_scores(["Tom has 14 apples now."], ["Tom has 41 apples now."])["exact_match"] == 0.0
    assert normalize_answer("The  Cat, sat!") == "the cat sat"
    assert exact_match("an answer", ["answer"]) == 0.0  # MiniLLM keeps the articles
    assert exact_match("Aaron went to a farm.", ["Aaron went to the farm."]) == 0.0
    assert exact_match("The answer.", ["the answer"]) == 1.0
    with pytest.raises(ValueError):
        corpus_scores(["a"], [])


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_examples():
    from mgsr_bench.eval.metrics import bootstrap_ci

    values = [float(v % 7) * 10 for v in range(50)]
    mean = sum(values) / len(values)
    low, high = bootstrap_ci(values)
    assert low < mean < high
    assert bootstrap_ci(values) == (low, high)  # fixed resampling seed: reproducible
    wide = high - low
    low4, high4 = bootstrap_ci(values * 4)
    assert high4 - low4 < wide * 0.7  # about 1/sqrt(4) as wide
    assert bootstrap_ci([5.0] * 10) == (5.0, 5.0)
