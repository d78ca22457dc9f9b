"""The five evaluation sets of the MiniLLM/DistiLLM protocol: loaders for their file formats and filters.

Formats read (the format is detected per file, from the keys of its first record):

* MiniLLM's processed JSONL: ``instruction``, ``input``, ``output`` (a string or a list of
  references) and ``prompt``; a missing ``prompt`` is built from the template. Plain
  instruction/input/output JSONL is the same without ``prompt``.
* self-instruct's ``user_oriented_instructions.jsonl``: ``instruction`` plus ``instances`` (each
  with ``input`` and ``output``): one record per instance, ``motivation_app`` kept as ``topic``
  (as MiniLLM's processed SelfInst does).
* FastChat's question file (``question_id`` with ``text``, or ``turns`` whose first turn is the
  question) with an answer file given as ``questions.jsonl+answers.jsonl`` (``question_id`` with
  ``text``, or ``choices[0].turns[0]``); ``category`` is kept.

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


PROTOCOLS = {
    "dolly": Protocol(),
    "selfinst": Protocol(drop_long_prompts=True),
    "vicuna": Protocol(),
    "sni": Protocol(min_reference_tokens=11),
    "unni": Protocol(min_reference_tokens=11, max_rows=10_000),
}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(path)]


def _record(instruction: str, input_text: str, output: Any, **extra: Any) -> dict[str, Any]:
    return {**extra, "instruction": instruction, "input": input_text, "output": output,
            "prompt": build_prompt(instruction, input_text)}


def _self_instruct(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("instances"), list) or "instruction" not in row:
            raise UserError(f"malformed self-instruct record: {path}: record {i} needs instruction and instances")
        for instance in row["instances"]:
            out.append(_record(row["instruction"], instance.get("input", ""), instance["output"],
                               topic=row.get("motivation_app", "")))
    return out


def _question_text(row: dict[str, Any]) -> str:
    if "turns" in row:
        return row["turns"][0]
    return row["text"]


def _answer_text(row: dict[str, Any]) -> str:
    if "choices" in row:
        return row["choices"][0]["turns"][0]
    return row["text"]


def _fastchat(questions: Path, answers: Path) -> list[dict[str, Any]]:
    by_id = {}
    for row in _read_jsonl(answers):
        if "question_id" not in row:
            raise UserError(f"malformed FastChat answer file: {answers}: a record has no question_id")
        by_id[row["question_id"]] = _answer_text(row)
    out = []
    for row in _read_jsonl(questions):
        qid = row.get("question_id")
        if qid not in by_id:
            raise UserError(f"FastChat question {qid!r} of {questions} has no answer in {answers}")
        out.append(_record(_question_text(row), "", by_id[qid], category=row.get("category", "")))
    return out


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


def load_instruct(spec: str | Path) -> list[dict[str, Any]]:
    """Records from one file in any supported format (``questions.jsonl+answers.jsonl`` for FastChat),
    or ``hub:databricks/databricks-dolly-15k[@split]``."""
    text = str(spec)
    if text.startswith("hub:"):
        return _from_hub(text[len("hub:"):])
    if "+" in text and not Path(text).exists():
        questions, answers = (Path(p) for p in text.split("+", 1))
        return _fastchat(questions, answers)
    path = Path(text)
    rows = _read_jsonl(path)
    first = rows[0]
    if "instances" in first:
        return _self_instruct(path, rows)
    if "question_id" in first:
        raise UserError(f"{path} is a FastChat question file: pass it with its answers as QUESTIONS+ANSWERS")
    return read_records(path)


def apply_protocol(records: list[dict[str, Any]], name: str, tokenizer: PreTrainedTokenizerBase,
                   max_prompt: int = 256) -> list[dict[str, Any]]:
    """The records the protocol keeps for evaluation set ``name`` (see :data:`PROTOCOLS`)."""
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
