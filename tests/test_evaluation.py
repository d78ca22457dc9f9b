"""The protocol's decoding settings, the five-seed loop, per-family scores, Hub Dolly and lm-eval offline."""

import json

import torch

import pytest

from mgsr_bench.data.instruct import DOLLY_SPLITS, dolly_records, load_instruct
from mgsr_bench.errors import UserError
from mgsr_bench.eval.evaluate import evaluate_model
from mgsr_bench.eval.generate import EvalSettings, encode_prompts, generate

from conftest import SHARED, tiny_model

DATA = SHARED / "data" / "instruct"


def test_prompts_are_cut_and_take_bos_only_when_asked(tokenizer, records):
    prompt = records[0]["prompt"]
    plain = tokenizer(prompt, add_special_tokens=False).input_ids
    assert encode_prompts(tokenizer, [prompt], EvalSettings(max_prompt=5)) == [plain[:5]]
    tokenizer.bos_token = tokenizer.eos_token  # the suite's tokenizer has none; LLaMA's has one
    try:
        with_bos = encode_prompts(tokenizer, [prompt], EvalSettings(max_prompt=5, add_bos=True))
    finally:
        tokenizer.bos_token = None
    assert with_bos == [[tokenizer.eos_token_id] + plain[:4]]
    with pytest.raises(UserError, match="no BOS token"):
        encode_prompts(tokenizer, [prompt], EvalSettings(add_bos=True))


def test_every_prompt_gets_max_length_minus_max_prompt_new_tokens_whatever_its_batch(tokenizer, records):
    """MiniLLM pads every prompt to max_prompt, so a short prompt beside a long one gets no more."""
    model = tiny_model(len(tokenizer))
    with torch.no_grad():
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tokenizer)))
        model.lm_head.bias[tokenizer.eos_token_id] = -1e4  # never stops
    prompts = [records[0]["prompt"][:20], records[1]["prompt"][:80]]
    settings = EvalSettings(greedy=True, max_length=60, max_prompt=40, batch_size=2, no_repeat_ngram_size=0)
    encoded = encode_prompts(tokenizer, prompts, settings)
    assert len(encoded[0]) < len(encoded[1]) < 40  # neither padded nor cut to max_prompt
    generated = generate(model, tokenizer, prompts, settings)
    assert [len(tokenizer(o, add_special_tokens=False).input_ids) for o in generated] == [20, 20]


@pytest.mark.parametrize("bad,message", [({"max_prompt": 512}, "must be below --max-length"),
                                         ({"temperature": 0.0}, "--temperature must be > 0"),
                                         ({"max_new_tokens": 0}, "--max-new-tokens must be >= 1")])
def test_impossible_settings_are_refused(bad, message):
    with pytest.raises(UserError, match=message):
        EvalSettings(**bad).validate()


def test_the_five_seed_loop_is_reproducible_and_seeds_matter(tokenizer, records):
    model = tiny_model(len(tokenizer))
    data = {"test": records[:12]}
    settings = EvalSettings(max_new_tokens=12, batch_size=5, no_repeat_ngram_size=0)
    a, b = (evaluate_model(model, tokenizer, data, settings) for _ in range(2))
    assert a == b
    per_seed = a["test"]["per_seed"]
    assert list(per_seed) == ["10", "20", "30", "40", "50"]
    assert len({json.dumps(s["examples"]) for s in per_seed.values()}) > 1  # different seeds, different samples
    means = [s["rougeL"] for s in per_seed.values()]
    assert a["test"]["rougeL"]["mean"] == pytest.approx(sum(means) / 5)


def _hub_rows(shared_rows):
    """Shared DollyEval rows mapped back to the Hub file's fields."""
    return [{"instruction": r["instruction"], "context": r["input"], "response": r["output"], "category": r["topic"]}
            for r in shared_rows]


@pytest.mark.skipif(not (DATA / "dolly" / "valid.jsonl").is_file(), reason="../shared/data/instruct is absent")
def test_hub_dolly_rows_become_the_minillm_records_byte_for_byte():
    shared = load_instruct(DATA / "dolly" / "valid.jsonl")
    converted = dolly_records(_hub_rows(shared), "test")
    fields = ("topic", "instruction", "input", "output", "prompt")
    assert [{k: r[k] for k in fields} for r in converted] == [{k: r[k] for k in fields} for r in shared]


def test_hub_dolly_split_sizes_and_loader(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = [{"instruction": f"q{i}", "context": "", "response": f"a{i}", "category": "open_qa"} for i in range(1600)]
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    sizes = {s: len(load_instruct(f"hub:databricks/databricks-dolly-15k@{s}")) for s in DOLLY_SPLITS}
    assert sizes == {"test": 500, "dev": 1000, "train": 100}
    assert load_instruct("hub:databricks/databricks-dolly-15k")[0]["instruction"] == "q0"  # test by default
    assert calls[0] == ("databricks/databricks-dolly-15k", "train")
    with pytest.raises(UserError, match="the Hub loader reads"):
        load_instruct("hub:someone/other")


@pytest.mark.slow
def test_lm_eval_runs_offline_on_the_tiny_tasks(tmp_path, tokenizer, records, offline):
    pytest.importorskip("lm_eval")
    from mgsr_bench.data.jsonl import write_records
    from mgsr_bench.eval.lm_harness import run_lm_eval

    write_records(tmp_path / "test.jsonl", records[:40])
    model = tiny_model(len(tokenizer))
    scores = run_lm_eval(model, tokenizer, ["tiny_gen", "tiny_mc"], tmp_path, limit=6)
    assert 0 <= scores["tiny_gen"]["rougeL,none"] <= 100
    assert 0 <= scores["tiny_mc"]["acc,none"] <= 1
    # the ROUGE-L lm-eval reports is this project's, on the same greedy generations
    greedy = EvalSettings(greedy=True, max_new_tokens=64, no_repeat_ngram_size=0, batch_size=1)
    ours = evaluate_model(model, tokenizer, {"t": records[:6]}, greedy)["t"]["rougeL"]["mean"]
    assert scores["tiny_gen"]["rougeL,none"] == pytest.approx(ours, abs=1e-6)
    with pytest.raises(UserError, match="unknown lm-eval task"):
        run_lm_eval(model, tokenizer, ["no_such_task_xyz"], tmp_path)


def test_the_lm_eval_task_hooks_score_as_the_projects_own_evaluation():
    """The tiny tasks' YAMLs name their metric hooks with ``!function utils.NAME``: each exists, and
    the generation hook gives the ROUGE-L and exact match (x 100) of the stripped generation."""
    import re
    from importlib import resources

    from mgsr_bench.eval.metrics import example_scores
    from mgsr_bench.eval.tasks import utils

    tasks = resources.files("mgsr_bench.eval") / "tasks"
    named = {m for f in tasks.iterdir() if f.name.endswith(".yaml")
             for m in re.findall(r"!function utils\.(\w+)", f.read_text())}
    assert "process_generation" in named and all(callable(getattr(utils, m, None)) for m in named)
    doc = {"output": "Tom has 41 apples now."}
    assert utils.process_generation(doc, ["  Tom has 41 apples now.\n"]) == {"rougeL": 100.0, "exact_match": 100.0}
    partial = utils.process_generation(doc, ["Tom has 14 apples"])
    scores = example_scores(["Tom has 14 apples"], [doc["output"]])
    assert partial == {"rougeL": scores["rougeL"][0], "exact_match": 0.0} and 0 < partial["rougeL"] < 100

def test_multiple_choice_rows_hide_the_reference_among_same_family_answers(records):
    from mgsr_bench.eval.lm_harness import multiple_choice_rows

    rows = multiple_choice_rows(records[:120])
    assert len(rows) > 100
    family_outputs = {}
    for r in records[:120]:
        family_outputs.setdefault(r["family"], set()).add(r["output"])
    by_prompt = {r["prompt"]: r for r in records[:120]}
    for row in rows:
        source = by_prompt[row["prompt"]]
        assert row["choices"][row["gold"]] == source["output"]
        assert len(set(row["choices"])) == 4 and set(row["choices"]) <= family_outputs[source["family"]]
    assert len({row["gold"] for row in rows}) == 4  # the reference's place varies


def test_per_family_scores_average_each_familys_examples(monkeypatch):
    """ROUGE-L and exact match per family, each the mean over that family's examples, max over an
    open-ended record's references."""
    from mgsr_bench.eval import evaluate

    records = [{"prompt": "p1", "output": "the cat sat", "family": "a"},
               {"prompt": "p2", "output": ["my dog ran", "the dog ran home"], "family": "b"},
               {"prompt": "p3", "output": "blue", "family": "a", "reference_model": "gpt-3.5-turbo"}]
    preds = ["the cat sat", "the dog ran", "red"]
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: preds)
    monkeypatch.setattr(evaluate, "fingerprint", lambda *a: "x")
    scored = evaluate_model(None, None, {"d": records}, EvalSettings(seeds=(10,)))["d"]
    seed = scored["per_seed"]["10"]
    assert scored["data_sha256"] == evaluate.examples_digest(records) != evaluate.examples_digest(records[:2])
    assert scored["reference_models"] == ["gpt-3.5-turbo"]
    # "the dog ran" against "my dog ran": LCS 2 of 3 and 3 -> F 2/3; against "the dog ran home": 3 of 3 and 4 -> 6/7
    assert seed["family_rougeL"] == pytest.approx({"a": 50.0, "b": 100 * 6 / 7})
    assert seed["family_exact_match"] == pytest.approx({"a": 50.0, "b": 0.0})
