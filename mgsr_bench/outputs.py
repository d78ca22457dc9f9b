"""The paths a command will write: checked before any work (the checks create nothing), and made
when the command first writes. A run that fails after minutes of training because its ``--out``
sits under a file wastes those minutes."""

from __future__ import annotations

import os
from pathlib import Path

from mgsr_bench.errors import UserError


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _check_writable_folder(folder: Path, path: Path, flag: str) -> None:
    """``folder`` exists and takes files, or can be made: its nearest existing ancestor is a writable folder."""
    ancestor = _nearest_existing(folder)
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {ancestor} is a file; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be created: {ancestor} is not writable; choose another path")


def check_output_folder(path: str | Path, flag: str = "--out") -> None:
    """Refuse a folder to write that is a file, or that cannot be made where it is asked for."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a folder; choose another path")
    _check_writable_folder(path, path, flag)


def check_output_file(path: str | Path, flag: str) -> None:
    """Refuse a file to write that is a folder, or whose folder cannot be made."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: name the file to write")
    _check_writable_folder(path.parent, path, flag)


def make_output_folder(path: str | Path, flag: str = "--out") -> None:
    """:func:`check_output_folder`, then make it (a refusal the checks cannot see, a read-only file
    system say, is one line too)."""
    path = Path(path)
    check_output_folder(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path} cannot be created ({e.strerror}); choose another path") from None
