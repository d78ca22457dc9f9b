"""Issue 5 loaders: the real shared evaluation sets, the raw formats and the protocol's filters."""

import json

import pytest

from mgsr_bench.data.instruct import apply_protocol, load_instruct
from mgsr_bench.errors import UserError

from conftest import SHARED

DATA = SHARED / "data" / "instruct"
needs_data = pytest.mark.skipif(not DATA.is_dir() or not (SHARED / "tokenizers" / "gpt2").is_dir(),
                                reason="../shared/data/instruct or ../shared/tokenizers/gpt2 is absent")


@pytest.fixture(scope="module")
def gpt2():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SHARED / "tokenizers" / "gpt2")


@needs_data
def test_raw_self_instruct_with_the_256_token_filter_equals_minillm_selfinst(gpt2):
    raw = load_instruct(DATA / "raw" / "self-instruct" / "user_oriented_instructions.jsonl")
    assert len(raw) == 252
    kept = apply_protocol(raw, "selfinst", gpt2)
    processed = load_instruct(DATA / "self-inst" / "valid.jsonl")
    assert len(kept) == 242
    fields = ("topic", "instruction", "input", "output", "prompt")
    assert [{k: r[k] for k in fields} for r in kept] == [{k: r[k] for k in fields} for r in processed]


@needs_data
@pytest.mark.parametrize("path,name,rows", [("dolly/valid.jsonl", "dolly", 500), ("vicuna/valid.jsonl", "vicuna", 80),
                                            ("sinst/11_/valid.jsonl", "sni", 1694)])
def test_shared_sets_keep_their_rows_under_the_protocol(gpt2, path, name, rows):
    records = load_instruct(DATA / path)
    assert len(records) == rows
    assert len(apply_protocol(records, name, gpt2)) == rows  # already filtered by MiniLLM's scripts


def test_reference_length_filter_and_unni_cap(tokenizer):
    long_ref, short_ref = "one two three four five six seven eight nine ten eleven twelve", "short"
    records = [{"instruction": "i", "input": "", "prompt": "p", "output": [long_ref, "x"]},
               {"instruction": "i", "input": "", "prompt": "p", "output": [short_ref, long_ref]}] * 6000
    kept = apply_protocol(records, "sni", tokenizer)
    assert len(kept) == 6000 and all(r["output"][0] == long_ref for r in kept)
    assert len(apply_protocol(records * 2, "unni", tokenizer)) == 10_000
    with pytest.raises(UserError, match="unknown evaluation set 'dollyy'"):
        apply_protocol(records, "dollyy", tokenizer)


def test_fastchat_question_and_answer_files(tmp_path):
    questions, answers = tmp_path / "question.jsonl", tmp_path / "answer.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "Why?", "category": "generic"}) + "\n"
                         + json.dumps({"question_id": 2, "turns": ["How?", "And then?"], "category": "math"}) + "\n")
    answers.write_text(json.dumps({"question_id": 2, "choices": [{"turns": ["Like this."]}]}) + "\n"
                       + json.dumps({"question_id": 1, "text": "Because."}) + "\n")
    records = load_instruct(f"{questions}+{answers}")
    assert [(r["instruction"], r["output"], r["category"]) for r in records] == [("Why?", "Because.", "generic"),
                                                                             ("How?", "Like this.", "math")]
    assert records[0]["prompt"].endswith("### Instruction:\nWhy?\n\n### Response:\n")
    with pytest.raises(UserError, match="FastChat question file"):
        load_instruct(questions)
    answers.write_text(json.dumps({"question_id": 1, "text": "Because."}) + "\n")
    with pytest.raises(UserError, match="question 2 .* has no answer"):
        load_instruct(f"{questions}+{answers}")


def test_plain_instruction_input_output_jsonl_gets_the_template(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps({"instruction": "Add.", "input": "2 and 3", "output": "5"}) + "\n")
    (record,) = load_instruct(path)
    assert "### Input:\n2 and 3\n\n### Response:\n" in record["prompt"]
