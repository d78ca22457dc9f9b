"""The five evaluation sets of the MiniLLM/DistiLLM protocol: loaders for their file formats and filters.

Formats read. A JSONL file's format is decided per record, by the fields its reader needs (extra
keys are kept and do not count); every record of a file must be of one format, and a record of
none, or of another, fails naming its line:

* MiniLLM's processed JSONL: ``instruction``, ``input``, ``output`` (a string or a list of
  references) and ``prompt``; a missing ``prompt`` is built from the template. Plain
  instruction/input/output JSONL is the same without ``prompt``. Any record with ``instruction``
  and ``output`` is read so, whatever else it carries (``question_id``, ``topic``, ``category``).
* self-instruct's ``user_oriented_instructions.jsonl``: ``instruction`` plus ``instances`` (each
  with ``input`` and ``output``, no ``instruction_with_input``): one record per instance,
  ``motivation_app`` kept as ``topic`` (as MiniLLM's processed SelfInst does).
* Unnatural Instructions' raw ``core_data.jsonl`` (instances carry ``instruction_with_input`` and
  ``constraints``): one record per instance in file order, ``instruction`` and the instance's
  ``input`` through the template, the instance's ``output`` as the reference, ``constraints``
  kept as a field (``full_data.jsonl`` reads the same, its ``reformulations`` unused). The
  papers' UnNI is the first 10,000 rows of MiniLLM's released, already sampled file; how that
  sample was drawn is not published, so a raw file's first 10,000 are *not* that subset.
* FastChat's question file (``question_id`` with ``text``, or ``turns`` whose first turn is the
  question, and no ``output``) with an answer file given as ``questions.jsonl+answers.jsonl``
  (``question_id`` with ``text``, or ``choices[0].turns[0]``); ``category`` is kept. A question
  file alone is refused: it holds no references.
* A natural-instructions task file (``tasks/taskNNN_name.json``: one JSON object with
  ``Definition`` and ``Instances``): ``Definition`` (a string, or a list joined with newlines) is
  the instruction, each instance's ``input`` the input and its ``output`` list the references,
  ``topic`` the task's name; the task's first 100 instances in file order, as S-NI takes them.
* S-NI from the raw tasks, ``DIR:TASKS``: DIR a folder of task files (natural-instructions'
  ``tasks/``), TASKS a text file of task names, one a line (``splits/default/test_tasks.txt``):
  each listed task's first 100 instances, tasks in the list's order; a listed task without its
  ``DIR/NAME.json`` is refused. ``DIR`` alone reads every ``*.json`` there, by file name. The
  instructions and instances are those of the natural-instructions copy read. MiniLLM's released
  S-NI names no commit, and it is not reproduced exactly: against commit ``1585235``, one of its
  tasks has another Definition and rows drawn from the first 102 instances (docs/evaluation.md).

* A Hub dataset, ``hub:databricks/databricks-dolly-15k`` (``@test``, ``@dev`` or ``@train``;
  default ``@test``): Dolly's ``instruction``, ``context``, ``response`` and ``category`` become
  ``instruction``, ``input``, ``output`` and ``topic`` with the template, in the Hub file's order;
  test = its first 500 rows, dev = the next 1000, train = the rest (MiniLLM's split sizes: the
  shared DollyEval file begins with the Hub file's first rows, in order). Needs ``datasets`` and
  the network or a local ``datasets`` cache; ``HF_DATASETS_OFFLINE`` is honoured by ``datasets``.

The protocol's filters (MiniLLM's data scripts), applied by :func:`apply_protocol`:

* SelfInst drops records whose prompt is longer than ``max_prompt`` (256) tokens (242 of 252 with
  GPT-2's tokenizer);
* S-NI and UnNI keep records whose first reference has at least 11 tokens (the ``11_`` split);
* UnNI keeps its first 10,000 records;
* every prompt is cut to its first ``max_prompt`` tokens at tokenisation (``tokenize_records``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mgsr_bench.data.jsonl import first_reference, read_jsonl, read_records
from mgsr_bench.data.template import build_prompt
from mgsr_bench.errors import UserError


@dataclass(frozen=True)
class Protocol:
    """One evaluation set's filters under the MiniLLM protocol."""

    drop_long_prompts: bool = False
    min_reference_tokens: int = 0
    max_rows: int | None = None

    @property
    def counts_tokens(self) -> bool:
        return self.drop_long_prompts or self.min_reference_tokens > 0



PROTOCOLS = {
    "dolly": Protocol(),
    "selfinst": Protocol(drop_long_prompts=True),
    "vicuna": Protocol(),
    "sni": Protocol(min_reference_tokens=11),
    "unni": Protocol(min_reference_tokens=11, max_rows=10_000),
}


def _record(instruction: str, input_text: str, output: Any, **extra: Any) -> dict[str, Any]:
    return {**extra, "instruction": instruction, "input": input_text, "output": output,
            "prompt": build_prompt(instruction, input_text)}


Row = tuple[int, dict[str, Any]]  # (line number, record) as read_jsonl gives them
NI_INSTANCES_PER_TASK = 100  # S-NI's test protocol: each task's first 100 instances


def _instances(path: Path, lineno: int, row: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    """A raw record's instances, checked here so that a bad one fails naming its line, not as a KeyError."""
    instances = row.get("instances")
    if not (isinstance(row.get("instruction"), str) and isinstance(instances, list) and instances
            and all(isinstance(i, dict) and isinstance(i.get("output"), str) and isinstance(i.get("input", ""), str)
                    for i in instances)):
        raise UserError(f"malformed {fmt} record: {path}:{lineno}: needs a text instruction and a non-empty "
                        "instances list whose items have a text output and input (fix or remove that line)")
    return instances


def _self_instruct(path: Path, rows: list[Row]) -> list[dict[str, Any]]:
    """One record per instance, ``motivation_app`` kept as ``topic``: MiniLLM's processed SelfInst has it."""
    return [_record(row["instruction"], instance.get("input", ""), instance["output"],
                    topic=row.get("motivation_app", ""))
            for lineno, row in rows for instance in _instances(path, lineno, row, "self-instruct")]


def _unnatural(path: Path, rows: list[Row]) -> list[dict[str, Any]]:
    """One record per instance of Unnatural Instructions' raw file, in file order: the task's
    ``instruction`` and the instance's ``input`` go through the template as every other set's do
    (``instruction_with_input`` would repeat the instruction), ``constraints`` is kept as a field."""
    return [_record(row["instruction"], instance.get("input", ""), instance["output"],
                    constraints=instance.get("constraints", ""))
            for lineno, row in rows for instance in _instances(path, lineno, row, "Unnatural Instructions")]


def _definition(path: Path, task: dict[str, Any]) -> str:
    """A task's instruction: natural-instructions stores ``Definition`` as a list of strings (joined
    with newlines) in most tasks and as one string in some (task1358 at commit 1585235)."""
    definition = task["Definition"]
    if isinstance(definition, list) and definition and all(isinstance(d, str) for d in definition):
        return "\n".join(definition)
    if isinstance(definition, str):
        return definition
    raise UserError(f"malformed natural-instructions task: {path}: Definition must be text or a list of text "
                    "(take the task file from allenai/natural-instructions' tasks/ folder)")


def _ni_task(path: Path, task: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's first :data:`NI_INSTANCES_PER_TASK` instances in file order (S-NI's test protocol),
    ``output`` kept as the list of references, the task's name as ``topic`` (as in MiniLLM's S-NI)."""
    instruction, instances = _definition(path, task), task["Instances"]
    if not isinstance(instances, list) or not instances:
        raise UserError(f"malformed natural-instructions task: {path}: Instances must be a non-empty list "
                        "(take the task file from allenai/natural-instructions' tasks/ folder)")
    out = []
    for i, instance in enumerate(instances[:NI_INSTANCES_PER_TASK], 1):
        output = instance.get("output") if isinstance(instance, dict) else None
        if not (isinstance(output, list) and output and all(isinstance(o, str) for o in output)
                and isinstance(instance.get("input"), str)):  # a list output means instance is a dict
            raise UserError(f"malformed natural-instructions task: {path}: instance {i} needs a text input and an "
                            "output list of reference strings (fix the instance or take the task file from "
                            "allenai/natural-instructions)")
        out.append(_record(instruction, instance["input"], output, topic=path.stem))
    return out


def _ni_task_file(path: Path) -> dict[str, Any] | None:
    """The task when ``path`` is a natural-instructions task file (one pretty-printed JSON object with
    ``Definition`` and ``Instances``), else ``None``: a JSONL file does not parse as one JSON value."""
    try:
        task = json.loads(path.read_bytes())
    except OSError:
        return None  # read_jsonl names a missing file
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        if path.suffix == ".json":
            raise UserError(f"malformed JSON: {path}: {e} (a natural-instructions task file is one JSON object "
                            "with Definition and Instances; give JSONL records a .jsonl name)") from None
        return None
    return task if isinstance(task, dict) and {"Definition", "Instances"} <= task.keys() else None


def _ni_folder_spec(text: str) -> tuple[Path, Path | None] | None:
    """``(folder, task list)`` when ``text`` is ``DIR`` or ``DIR:TASKS`` with DIR an existing folder."""
    if Path(text).is_dir():
        return Path(text), None
    folder, sep, task_list = text.rpartition(":")
    return (Path(folder), Path(task_list)) if sep and Path(folder).is_dir() else None


def _task_names(folder: Path, task_list: Path | None) -> list[str]:
    """The task names of the list, one a line in its order (as natural-instructions'
    ``splits/default/test_tasks.txt``), or every ``*.json`` in the folder by name without a list."""
    if task_list is None:
        names = sorted(p.stem for p in folder.glob("*.json"))
        if not names:
            raise UserError(f"no natural-instructions task files (*.json) in {folder}: pass the tasks/ folder")
        return names
    try:
        text = task_list.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the task list {task_list} ({type(e).__name__}): pass DIR:TASKS with TASKS a "
                        "UTF-8 file of task names, one a line (natural-instructions' splits/default/test_tasks.txt)"
                        ) from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"empty task list: {task_list} (name one task a line)")
    return names


def _ni_folder(folder: Path, task_list: Path | None) -> list[dict[str, Any]]:
    """S-NI from the raw tasks: each named task's first 100 instances, tasks in the list's order."""
    out = []
    for name in _task_names(folder, task_list):
        path = folder / f"{name}.json"
        task = _ni_task_file(path)
        if task is None:
            raise UserError(f"task {name} of {task_list or folder}: {path} is missing or is no natural-instructions "
                            "task (one JSON object with Definition and Instances); pass the repository's tasks/ "
                            "folder")
        out.extend(_ni_task(path, task))
    return out


_QUESTION_TEXT = (("turns", 0), ("text",))  # FastChat's question files, new and old layouts
_ANSWER_TEXT = (("choices", 0, "turns", 0), ("text",))  # its answer files, new and old


def _fastchat_text(path: Path, lineno: int, row: dict[str, Any], layouts: tuple[tuple[Any, ...], ...]) -> str:
    """The text at the first of ``layouts`` whose key ``row`` has, checked here so that a bad line
    fails naming itself, not as a KeyError."""
    keys = next((keys for keys in layouts if keys[0] in row), layouts[-1])
    value: Any = row
    try:
        for key in keys:
            value = value[key]
    except (KeyError, IndexError, TypeError):
        value = None
    if not isinstance(value, str):
        where = ".".join(str(k) for k in keys)
        raise UserError(f"malformed FastChat record: {path}:{lineno}: {where} is not there or not text "
                        f"(expected {' or '.join('.'.join(map(str, k)) for k in layouts)}; fix or remove that line)")
    return value


def _fastchat(questions: Path, answers: Path) -> list[dict[str, Any]]:
    """Questions joined with their answers; an answer's ``model_id`` (which model wrote the reference)
    is kept as ``reference_model``."""
    by_id = {}
    for lineno, row in read_jsonl(answers):
        if not isinstance(row.get("question_id"), (int, str)):
            raise UserError(f"malformed FastChat answer file: {answers}:{lineno}: the record has no question_id "
                            "(an integer or text)")
        by_id[row["question_id"]] = (_fastchat_text(answers, lineno, row, _ANSWER_TEXT), row.get("model_id"))
    out = []
    for lineno, row in read_jsonl(questions):
        qid = row.get("question_id")
        if not isinstance(qid, (int, str)) or qid not in by_id:
            raise UserError(f"FastChat question {qid!r} of {questions}:{lineno} has no answer in {answers}")
        answer, model = by_id[qid]
        extra = {"reference_model": model} if model is not None else {}
        out.append(_record(_fastchat_text(questions, lineno, row, _QUESTION_TEXT), "", answer,
                           category=row.get("category", ""), **extra))
    return out


# The protocol's Vicuna references: MiniLLM's released vicuna/valid.jsonl (80 answers of gpt-3.5-turbo,
# FastChat's answer_gpt35.jsonl), as a digest of its outputs in order (:func:`references_digest`).
VICUNA_REFERENCES = "4393e9e39c32b106"


def references_digest(records: list[dict[str, Any]]) -> str:
    """SHA-256 (16 hex digits) of the records' references, one JSON value per line, in order."""
    text = "\n".join(json.dumps(r["output"], ensure_ascii=False) for r in records)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reference_warning(name: str, records: list[dict[str, Any]]) -> str | None:
    """A warning when ``vicuna``'s references are not the protocol's: the papers' Vicuna scores are
    ROUGE-L against gpt-3.5-turbo's answers, and any FastChat answer file loads."""
    if name != "vicuna" or references_digest(records) == VICUNA_REFERENCES:
        return None
    models = sorted({str(r["reference_model"]) for r in records if "reference_model" in r}) or ["an unnamed model"]
    return (f"warning: vicuna's references are not the protocol's (MiniLLM's vicuna/valid.jsonl, gpt-3.5-turbo's "
            f"answers) but {', '.join(models)}'s: its scores are not comparable with the papers'")


HUB_DOLLY = "databricks/databricks-dolly-15k"
DOLLY_SPLITS = {"test": (0, 500), "dev": (500, 1500), "train": (1500, None)}


def dolly_records(rows: list[dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """Hub Dolly rows (``instruction``, ``context``, ``response``, ``category``) as protocol records of ``split``."""
    if split not in DOLLY_SPLITS:
        raise UserError(f"unknown Dolly split {split!r}; choose one of {', '.join(DOLLY_SPLITS)}")
    start, stop = DOLLY_SPLITS[split]
    return [_record(r["instruction"], r["context"], r["response"], topic=r["category"]) for r in rows[start:stop]]


def _from_hub(spec: str) -> list[dict[str, Any]]:
    name, _, split = spec.partition("@")
    if name != HUB_DOLLY:
        raise UserError(f"hub:{name}: the Hub loader reads {HUB_DOLLY} (MiniLLM's split); "
                        "pass other sets as files")
    if split and split not in DOLLY_SPLITS:  # before any download
        raise UserError(f"unknown Dolly split {split!r}; choose one of {', '.join(DOLLY_SPLITS)}")
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError("hub: datasets need the datasets package: pip install datasets") from None
    try:
        rows = list(load_dataset(name, split="train"))
    except Exception as e:  # offline without a cache, or a network error: one line, not a traceback
        raise UserError(f"could not load {name} from the Hub ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "go online once or pass a local file") from None
    return dolly_records(rows, split or "test")


FORMATS = ("MiniLLM or plain records: instruction and output; self-instruct: instruction and instances[].output; "
           "Unnatural Instructions: instances[].instruction_with_input or constraints; FastChat: QUESTIONS+ANSWERS; "
           "natural-instructions: a task .json or DIR[:TASKS]")


def _kind(row: dict[str, Any]) -> str:
    """A JSONL record's format, judged by the fields its reader needs, so that extra keys (a MiniLLM
    record's ``question_id``) do not decide it."""
    instances = row.get("instances")
    first = instances[0] if isinstance(instances, list) and instances and isinstance(instances[0], dict) else {}
    if "instruction" in row and "output" in row:
        return "MiniLLM"
    if "instruction_with_input" in first or "constraints" in first:
        return "Unnatural Instructions"
    if "instruction" in row and "output" in first:
        return "self-instruct"
    if "question_id" in row and ("text" in row or "turns" in row):
        return "FastChat question"
    return "unknown"


def _file_kind(path: Path, rows: list[Row]) -> str:
    """The one format of a JSONL file's records; a record of no known format, or of another format than
    the first record's, fails naming its line."""
    first, kind = rows[0][0], _kind(rows[0][1])
    for lineno, row in rows:
        this = _kind(row)
        if this == "unknown":
            raise UserError(f"unrecognised record: {path}:{lineno}: its keys ({', '.join(sorted(row)) or 'none'}) "
                            f"fit no supported format ({FORMATS})")
        if this != kind:
            raise UserError(f"mixed formats: {path}:{lineno} is {this} but line {first} is {kind} "
                            "(give each format its own file)")
    return kind


def load_instruct(spec: str | Path) -> list[dict[str, Any]]:
    """Records of one evaluation set in any format of the module docstring: a file, FastChat's
    ``QUESTIONS+ANSWERS``, natural-instructions' ``DIR[:TASKS]`` or
    ``hub:databricks/databricks-dolly-15k[@split]``."""
    text = str(spec)
    if text.startswith("hub:"):
        return _from_hub(text[len("hub:"):])
    folder = _ni_folder_spec(text)
    if folder is not None:
        return _ni_folder(*folder)
    if "+" in text and not Path(text).exists():
        questions, answers = (Path(p) for p in text.split("+", 1))
        return _fastchat(questions, answers)
    path = Path(text)
    task = _ni_task_file(path)
    if task is not None:
        return _ni_task(path, task)
    rows = read_jsonl(path)
    kind = _file_kind(path, rows)
    if kind == "FastChat question":
        raise UserError(f"{path} is a FastChat question file: pass it with its answers as QUESTIONS+ANSWERS")
    if kind == "self-instruct":
        return _self_instruct(path, rows)
    if kind == "Unnatural Instructions":
        return _unnatural(path, rows)
    return read_records(path)


def apply_protocol(records: list[dict[str, Any]], name: str, tokenizer: PreTrainedTokenizerBase,
                   max_prompt: int = 256) -> list[dict[str, Any]]:
    """The records the protocol keeps for evaluation set ``name`` (see :data:`PROTOCOLS`), tokens
    counted with ``tokenizer``: the protocol's (``mgsr_bench.config.PROTOCOL_TOKENIZER``), whatever model is scored.
    The released MiniLLM files were filtered with it, so they pass unchanged."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown evaluation set {name!r}; the protocol's sets are {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    kept = records
    if protocol.drop_long_prompts:
        kept = [r for r in kept if len(tokenizer(r["prompt"], add_special_tokens=False).input_ids) <= max_prompt]
    if protocol.min_reference_tokens:
        kept = [r for r in kept if len(tokenizer(first_reference(r["output"]), add_special_tokens=False).input_ids)
                >= protocol.min_reference_tokens]
    if protocol.max_rows is not None:
        kept = kept[: protocol.max_rows]
    return kept
