"""Read and write MiniLLM-format JSONL records with errors that name the file and line."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from mgsr_bench.data.template import build_prompt
from mgsr_bench.errors import UserError, writing
from mgsr_bench.outputs import temp_prefix

REQUIRED = ("instruction", "output")


def read_jsonl(path: str | Path, what: str = "") -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` per non-blank line of a JSONL file.

    Raises ``UserError`` for a missing file, an empty file, text that is not UTF-8 or a line that is
    not one JSON object, naming the file and the 1-based line number; ``what`` names the expected
    format in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path} (pass an existing {what}.jsonl file)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw[:e.start].count(b"\n") + 1
        raise UserError(f"malformed JSONL: {path}:{lineno}: not UTF-8 text (save the file as UTF-8)") from None
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON text may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"malformed JSONL: {path}:{lineno}: {e.msg} (each line must be one JSON object)") from None
        except RecursionError:
            raise UserError(f"malformed JSONL: {path}:{lineno}: nested too deeply to read (a record is a flat "
                            "object of text fields)") from None
        if not isinstance(row, dict):
            raise UserError(f"malformed JSONL: {path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    if not rows:
        raise UserError(f"empty data file: {path} (it holds no records)")
    return rows


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Load a MiniLLM-format JSONL file; a missing ``prompt`` is built from the template.

    Raises ``UserError`` as :func:`read_jsonl` does, and for a record without ``instruction`` /
    ``output`` or with a field that is not text, naming the file and the 1-based line number.
    """
    rows = []
    for lineno, row in read_jsonl(path, "MiniLLM-format "):
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise UserError(f"malformed record: {path}:{lineno}: missing key(s) {', '.join(missing)} "
                            f"(MiniLLM records need instruction, input, output, prompt)")
        row.setdefault("input", "")
        bad = [k for k in ("instruction", "input", "prompt") if k in row and not isinstance(row[k], str)]
        output = row["output"]
        if not (isinstance(output, str) or (isinstance(output, list) and output
                                             and all(isinstance(o, str) for o in output))):
            bad.append("output")
        if bad:
            raise UserError(f"malformed record: {path}:{lineno}: {', '.join(bad)} must be text (output: a string "
                            f"or a list of reference strings)")
        row.setdefault("prompt", build_prompt(row["instruction"], row["input"]))
        rows.append(row)
    return rows


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: the file is whole or absent."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())  # the rename must not land before the bytes do
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def first_reference(output: str | list[str]) -> str:
    """A record's response for training and teacher forcing: its ``output``, or the first of its
    references where an evaluation record holds several."""
    return output if isinstance(output, str) else output[0]


def records_text(rows: Iterable[dict[str, Any]]) -> str:
    """Records as JSONL text: the bytes :func:`write_records` writes, and what a data digest hashes."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_records(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write records as JSONL, atomically."""
    write_atomic(path, records_text(rows))
