"""Instruction-data loaders: the real shared evaluation sets, the raw formats and the protocol's filters."""

import json

import pytest

from mgsr_bench.data.instruct import apply_protocol, load_instruct, reference_warning
from mgsr_bench.data.template import build_prompt
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


def test_vicunas_reference_model_is_kept_and_references_not_the_protocols_are_warned_about(tmp_path):
    questions, answers = tmp_path / "question.jsonl", tmp_path / "answer.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "Why?", "category": "generic"}) + "\n")
    answers.write_text(json.dumps({"question_id": 1, "text": "Because.", "model_id": "vicuna-13b:20230322"}) + "\n")
    records = load_instruct(f"{questions}+{answers}")
    assert records[0]["reference_model"] == "vicuna-13b:20230322"
    assert "not the protocol's" in reference_warning("vicuna", records) and "vicuna-13b:20230322" in \
        reference_warning("vicuna", records)
    assert reference_warning("dolly", records) is None


@needs_data
def test_the_protocols_vicuna_file_draws_no_warning():
    assert reference_warning("vicuna", load_instruct(DATA / "vicuna" / "valid.jsonl")) is None


def test_plain_instruction_input_output_jsonl_gets_the_template(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps({"instruction": "Add.", "input": "2 and 3", "output": "5"}) + "\n")
    (record,) = load_instruct(path)
    assert "### Input:\n2 and 3\n\n### Response:\n" in record["prompt"]


def test_a_minillm_record_with_a_question_id_is_read_as_a_record(tmp_path):
    path = tmp_path / "valid.jsonl"
    row = {"question_id": 1, "instruction": "Why?", "input": "", "output": "Because.", "prompt": "Q: Why?\nA: "}
    path.write_text(json.dumps(row) + "\n")
    assert load_instruct(path) == [row]


UNNI_LINE = {"instruction": "Answer with A or B.", "instances": [
    {"instruction_with_input": "Answer with A or B.\n\nBlue or red?", "input": "Blue or red?",
     "constraints": "One of: A, B.", "output": "A"}]}


def test_a_raw_unnatural_instructions_line_goes_to_its_own_reader(tmp_path):
    path = tmp_path / "core_data.jsonl"
    path.write_text(json.dumps(UNNI_LINE) + "\n")
    assert load_instruct(path) == [{"constraints": "One of: A, B.", "instruction": "Answer with A or B.",
                                    "input": "Blue or red?", "output": "A",
                                    "prompt": build_prompt("Answer with A or B.", "Blue or red?")}]


def ni_task(definition: str | list[str], outputs: list[list[str]]) -> str:
    """A natural-instructions task file's text: one pretty-printed JSON object, as the repository has them."""
    return json.dumps({"Contributors": ["someone"], "Definition": definition, "Positive Examples": [],
                       "Instances": [{"id": f"t-{i}", "input": f"input {i}", "output": out}
                                     for i, out in enumerate(outputs)]}, indent=4)


def test_a_natural_instructions_task_file_loads(tmp_path):
    path = tmp_path / "task001_demo.json"
    path.write_text(ni_task(["Do this.", "Then that."], [["one", "uno"], ["two"]]))
    records = load_instruct(path)
    assert [(r["topic"], r["instruction"], r["input"], r["output"]) for r in records] == [
        ("task001_demo", "Do this.\nThen that.", "input 0", ["one", "uno"]),
        ("task001_demo", "Do this.\nThen that.", "input 1", ["two"])]
    assert records[0]["prompt"] == build_prompt("Do this.\nThen that.", "input 0")
    path.write_text(ni_task("Do this.", [["one"]]))  # some tasks hold Definition as one string
    assert [r["instruction"] for r in load_instruct(path)] == ["Do this."]


def test_a_task_folder_and_list_give_each_listed_tasks_first_100_instances_in_order(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, n in (("task1_long", 150), ("task2_short", 5), ("task3_unlisted", 3)):
        (tasks / f"{name}.json").write_text(ni_task(["Do."], [[f"{name} {i}"] for i in range(n)]))
    task_list = tmp_path / "test_tasks.txt"
    task_list.write_text("task2_short\ntask1_long\n\n")
    records = load_instruct(f"{tasks}:{task_list}")
    assert [r["output"] for r in records] == ([[f"task2_short {i}"] for i in range(5)]
                                              + [[f"task1_long {i}"] for i in range(100)])
    every_task = ["task1_long"] * 100 + ["task2_short"] * 5 + ["task3_unlisted"] * 3  # no list: by file name
    assert [r["topic"] for r in load_instruct(tasks)] == every_task
    task_list.write_text("task9_missing\n")
    with pytest.raises(UserError, match=r"task task9_missing of .*test_tasks.txt: .*task9_missing.json is missing"):
        load_instruct(f"{tasks}:{task_list}")


@pytest.mark.parametrize("name,text,message", [
    ("mixed.jsonl", json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps(UNNI_LINE) + "\n",
     r"mixed formats: .*mixed.jsonl:2 is Unnatural Instructions but line 1 is MiniLLM"),
    ("odd.jsonl", json.dumps({"prompt": "p"}) + "\n", r"unrecognised record: .*odd.jsonl:1: its keys \(prompt\)"),
    ("bad_unni.jsonl", json.dumps({"instruction": "a", "instances": [{"constraints": "c"}]}) + "\n",
     r"malformed Unnatural Instructions record: .*bad_unni.jsonl:1: .*text output"),
    ("task_cut.json", '{"Definition": ["Do."],', r"malformed JSON: .*task_cut.json: .*Definition and Instances"),
    ("task_bad.json", json.dumps({"Definition": ["Do."], "Instances": [{"input": "x", "output": "y"}]}),
     r"task_bad.json: instance 1 needs a text input and an output list"),
])
def test_a_malformed_file_fails_in_one_line_naming_it(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message) as e:
        load_instruct(tmp_path / name)
    assert "\n" not in str(e.value)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

# One valid file (or pair of files) per layout load_instruct reads; the fuzz replaces or deletes one
# value in it. Keys are paths into the JSON: a row's field, or a field of its first instance.
LAYOUTS = {
    "minillm.jsonl": ({"instruction": "a", "input": "b", "output": "c", "prompt": "p"}, "instances"),
    "plain.jsonl": ({"instruction": "a", "output": ["c", "d"]}, None),
    "self-instruct.jsonl": ({"instruction": "a", "instances": [{"input": "b", "output": "c"}],
                             "motivation_app": "m"}, "instances"),
    "unnatural.jsonl": ({"instruction": "a", "instances": [{"instruction_with_input": "a b", "input": "b",
                                                          "constraints": "k", "output": "c"}]}, "instances"),
    "task.json": ({"Definition": ["define"], "Instances": [{"id": "t-1", "input": "b", "output": ["c"]}]},
                  "Instances"),
    "fastchat": ({"question_id": 1, "turns": ["q"], "category": "writing"}, None),
}
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                          max_size=3),
                           max_leaves=6)


def _fuzzed(row: dict, nested: str | None, data: st.DataObject) -> dict:
    row = json.loads(json.dumps(row))
    target = row
    if nested and data.draw(st.booleans()) and isinstance(row.get(nested), list):
        target = row[nested][0]
    key = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.booleans()):
        del target[key]
    else:
        target[key] = data.draw(JSON_VALUES)
    return row


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(sorted(LAYOUTS)), data=st.data())
def test_fuzzed_files_of_every_layout_load_as_text_records_or_fail_in_one_clear_line(tmp_path, layout, data):
    """Each value of each layout's record, replaced by any JSON value (NaN, huge integers, nesting
    included) or deleted: the loader gives records whose fields are text, or one ``UserError``."""
    row, nested = LAYOUTS[layout]
    row = _fuzzed(row, nested, data)
    if layout == "fastchat":
        answer = {"question_id": 1, "choices": [{"turns": ["r"]}], "model_id": "m"}
        if data.draw(st.booleans()):
            row, answer = {"question_id": 1, "turns": ["q"]}, _fuzzed(answer, "choices", data)
        (tmp_path / "q.jsonl").write_text(json.dumps(row) + "\n")
        (tmp_path / "a.jsonl").write_text(json.dumps(answer) + "\n")
        spec = f"{tmp_path / 'q.jsonl'}+{tmp_path / 'a.jsonl'}"
    else:
        (tmp_path / layout).write_text(json.dumps(row) + ("\n" if layout.endswith("jsonl") else ""))
        spec = str(tmp_path / layout)
    try:
        records = load_instruct(spec)
    except UserError as e:
        assert "\n" not in str(e) and str(e)
        return
    for r in records:
        assert all(isinstance(r[k], str) for k in ("instruction", "input", "prompt"))
        assert isinstance(r["output"], str) or (r["output"] and all(isinstance(o, str) for o in r["output"]))
