"""A results store: run records in a plain folder tree, and an SQLite index rebuilt from them.

The records are the truth: one JSON file each, anywhere under the store's folder (so a store can be
a git repository, a CI artifact folder or ``leaderboards/``) except in hidden files and folders
(temporary copies, caches). Every other ``.json`` file there must parse: one that does not (a
record cut short, at any byte) is refused, naming it, rather than left out of the tables.
:meth:`ResultsStore.add` writes a new record under ``<pair>/<label>/`` with a name no other writer
can take (timestamp, config hash and a random suffix) through a temporary file and a rename, so
concurrent writers never lose or tear a record. The index (``.mgsr-index.sqlite``, not meant for
git) is rebuilt whenever the files it was built from changed (paths, sizes, modification times),
into a temporary file renamed over the old one; queries by method, label, pair, dataset, commit and
date then read only the matching records.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

from mgsr_bench.errors import EnvironmentFailure, UserError, writing
from mgsr_bench.outputs import temp_prefix
from mgsr_bench.results.record import SCHEMA, json_problem, read_record, write_record

INDEX = ".mgsr-index.sqlite"
_TABLES = """
CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER);
CREATE TABLE records (path TEXT PRIMARY KEY, label TEXT, method TEXT, pair TEXT, git_commit TEXT, created TEXT,
                      config_hash TEXT);
CREATE TABLE scores (path TEXT, dataset TEXT, metric TEXT, mean REAL, std REAL, seeds INTEGER, n INTEGER);
CREATE INDEX scores_by_dataset ON scores (dataset, metric);
"""


def pair_name(record: dict[str, Any]) -> str:
    """One string per teacher/student pair: the suite name, ``teacher->student``, or the student alone."""
    pair = record.get("pair") or {}
    if pair.get("name"):
        return str(pair["name"])
    if pair.get("teacher") and pair.get("student"):
        return f"{pair['teacher']}->{pair['student']}"
    return str(pair.get("student", "unknown"))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"


@contextlib.contextmanager
def _writing_index(db: Path) -> Iterator[None]:
    """A refused write of the index (the OS's error, or SQLite's "database or disk is full") as one line naming it."""
    try:
        with writing(db):
            yield
    except sqlite3.OperationalError as e:
        raise EnvironmentFailure(f"cannot write {db}: {e}; free space there or make the folder writable") from e


def _is_record_file(path: Path) -> bool:
    """Whether ``path`` holds a run record. Other JSON is not one (an object that names no schema,
    another tool's file); a ``.json`` file that does not parse (a record cut short at any point,
    damaged, not UTF-8, nested too deeply) is an error naming it, never a row left out without a word."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # removed since the listing
        return False
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); make it readable or move it out of the store") from None
    try:
        head = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"bad run record {path}: not UTF-8 text (restore the file or delete it)") from None
    except ValueError as e:
        raise UserError(f"bad run record {path}: {json_problem(e)} (restore the file or delete it)") from None
    except RecursionError:
        raise UserError(f"bad run record {path}: JSON nested too deeply (restore the file or delete it)") from None
    return isinstance(head, dict) and (head.get("schema") == SCHEMA or "schema_version" in head)


class ResultsStore:
    """Run records under ``root`` (any layout, searched recursively) with a rebuildable index."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"results store {self.root} is not a folder")

    # --- writing -------------------------------------------------------------------------------
    def add(self, record: dict[str, Any]) -> Path:
        """Write a validated record under a fresh name; returns its path."""
        stamp = re.sub(r"[^0-9]", "", record.get("created", ""))[:14]
        name = f"{stamp}-{record.get('config_hash', 'nohash')}-{uuid.uuid4().hex[:8]}.json"
        path = self.root / _safe(pair_name(record)) / _safe(str(record.get("label", "run"))) / name
        return write_record(record, path)

    # --- the index -----------------------------------------------------------------------------
    def _files(self) -> dict[str, tuple[int, int]]:
        if not self.root.is_dir():
            raise UserError(f"results store not found: {self.root}")
        out = {}
        for path in self.root.rglob("*.json"):
            if any(part.startswith(".") for part in path.relative_to(self.root).parts):
                continue  # hidden: a model copy still under its temporary name, an evaluation cache, never a record
            try:
                st = path.stat()
            except FileNotFoundError:  # removed since the listing
                continue
            out[path.relative_to(self.root).as_posix()] = (st.st_size, st.st_mtime_ns)
        return out

    def _indexed_files(self, db: Path) -> dict[str, tuple[int, int]] | None:
        try:
            with sqlite3.connect(db) as con:
                return {p: (s, m) for p, s, m in con.execute("SELECT path, size, mtime_ns FROM files")}
        except sqlite3.Error:
            return None

    def refresh(self) -> Path:
        """The index, rebuilt first if any record file was added, removed or changed since it was built."""
        db = self.root / INDEX
        files = self._files()
        if db.exists() and self._indexed_files(db) == files:
            return db
        try:
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(db), dir=self.root)
        except OSError as e:
            raise UserError(f"cannot write the index of {self.root} ({e.strerror}); make the folder writable") from None
        os.close(fd)
        try:
            with _writing_index(db):
                with sqlite3.connect(tmp) as con:
                    con.executescript(_TABLES)
                    con.executemany("INSERT INTO files VALUES (?, ?, ?)", [(p, s, m) for p, (s, m) in files.items()])
                    for rel in sorted(files):
                        path = self.root / rel
                        if not _is_record_file(path):
                            continue
                        r = read_record(path)  # a malformed record fails here, naming its file and field
                        con.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    (rel, r["label"], r["method"], pair_name(r), r.get("git_commit") or "",
                                     r["created"], r["config_hash"]))
                        seeds = len(r["evaluation"]["seeds"])
                        for dataset, s in r["scores"].items():
                            for metric in ("rougeL", "exact_match"):
                                con.execute("INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                                            (rel, dataset, metric, s[metric]["mean"], s[metric]["std"], seeds, s["n"]))
                os.replace(tmp, db)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return db

    # --- queries -------------------------------------------------------------------------------
    def paths(self, *, methods: Iterable[str] | None = None, labels: Iterable[str] | None = None,
              pair: str | None = None, dataset: str | None = None, commit: str | None = None,
              since: str | None = None, until: str | None = None) -> list[Path]:
        """Record files matching every given filter (``commit`` matches a prefix; dates compare as ISO text)."""
        where, args = [], []
        for column, values in (("method", methods), ("label", labels)):
            if values:
                values = list(values)
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                args += values
        if pair:
            where.append("pair = ?")
            args.append(pair)
        if commit:
            where.append("git_commit LIKE ?")
            args.append(commit + "%")
        if since:
            where.append("created >= ?")
            args.append(since)
        if until:
            where.append("created <= ?")
            args.append(until + "T99" if len(until) == 10 else until)  # a bare date: through the end of that day
        if dataset:
            where.append("path IN (SELECT path FROM scores WHERE dataset = ?)")
            args.append(dataset)
        sql = "SELECT path FROM records" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created, path"
        with sqlite3.connect(self.refresh()) as con:
            return [self.root / p for (p,) in con.execute(sql, args)]

    def records(self, **filters: Any) -> list[dict[str, Any]]:
        """The matching records, read and validated, oldest first."""
        return [read_record(p) for p in self.paths(**filters)]
