"""The paths a command will write: checked before any work (the checks create nothing), and made
when the command first writes. A run that fails after minutes of training because its ``--out``
sits under a file wastes those minutes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator

from mgsr_bench.errors import UserError


def check_plain_name(name: str, what: str) -> None:
    """Refuse a name that becomes part of a file name (a label, a dataset name) yet could point
    elsewhere: empty, ``.``/``..``, a path separator, a leading dot (hidden files are temporary
    ones), a control character."""
    if (not name or name in (".", "..") or name.startswith(".") or "/" in name or (os.altsep or "/") in name
            or os.sep in name or any(ord(c) < 32 for c in name)):
        raise UserError(f"{what} must be a plain name (no path separators, no leading dot), got {name!r}")


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


# --- temporary names, and sweeping the ones killed runs left ---------------------------------------
# Every file or folder written under a temporary name is called ``.NAME.tmp-HOST-PID`` (with a random
# tail where several may exist at once): the host (a digest of its name) and the process that wrote
# it. A SIGKILL is the one way to leave such an entry behind; a later command sweeps, in the folder it
# writes, exactly the entries of its own host whose process is gone, never a live writer's nor
# another machine's on a shared file system.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\..+\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)(?:-[A-Za-z0-9_]+)?$")


def temp_prefix(path: Path) -> str:
    """The name prefix for ``tempfile.mkstemp``/``mkdtemp`` (which add the random tail) writing ``path``."""
    return f".{path.name}.tmp-{_HOST}-{os.getpid()}-"


def temp_sibling(path: Path) -> Path:
    """The temporary name beside ``path`` under which this process writes it before the rename."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (this process included; another user's counts)."""
    if pid <= 0:  # os.kill(0, ...) would signal the process group
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders under ``folder`` that killed processes of this host
    left; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    swept = []
    for path in sorted(folder.rglob(".*.tmp-*")):
        match = _TEMP.match(path.name)
        if match is None or match["host"] != _HOST or process_alive(int(match["pid"])) or not path.exists():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        swept.append(path)
    return swept


@contextlib.contextmanager
def kept_only_if_written(*folders: Path) -> Iterator[None]:
    """On an error (a setting refused once the models have loaded, say), remove each of ``folders``
    that this block created and left without a file: a refused command leaves no empty ``--out``."""
    made = [Path(f) for f in folders if not Path(f).exists()]
    try:
        yield
    except BaseException:
        for folder in made:
            if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)
        raise
