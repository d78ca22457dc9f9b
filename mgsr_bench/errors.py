"""The exceptions that the CLI turns into a single clear line and a non-zero exit."""

from __future__ import annotations

import contextlib
import difflib
import errno
from pathlib import Path
from typing import Iterable, Iterator


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix, and nothing ran yet."""


class EnvironmentFailure(Exception):
    """The machine refused what a command needed (a full disk, a permission, damaged or unsafe
    files): the message names the file and the fix. Unlike a ``UserError`` it may come after
    minutes of work; what was being written is removed first, so nothing is left half-written."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UserError:
    """``unknown <kind> 'x' (did you mean 'y'?); known <kind>s: ...`` as a ``UserError``."""
    known = list(known)
    hint = difflib.get_close_matches(name, known, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return UserError(f"unknown {kind} {name!r}{did_you_mean}; known {kind}s: {', '.join(known)}")


_FIXES = {
    errno.ENOSPC: "free space there or write elsewhere",
    errno.EDQUOT: "free space within your quota or write elsewhere",
    errno.EACCES: "make it accessible to you or use another path",
    errno.EPERM: "make it accessible to you or use another path",
    errno.EROFS: "write to another file system",
}


def describe_os_error(error: OSError, path: str | Path | None = None, action: str = "") -> str:
    """One line for an ``OSError``: ``ACTION PATH: reason; fix``, the fix from its errno. ``path``
    names the file when the error does not (a write into an open file carries no name)."""
    where = error.filename if path is None else path
    reason = error.strerror or (str(error).splitlines() or [type(error).__name__])[0]
    subject = f"{action} {where}".strip() if where is not None else action
    fix = _FIXES.get(error.errno or -1)
    return (f"{subject}: {reason}" if subject else reason) + (f"; {fix}" if fix else "")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while ``path`` is written into an :class:`EnvironmentFailure`
    naming ``path``; the writer's own cleanup has run by then."""
    try:
        yield
    except OSError as e:
        raise EnvironmentFailure(describe_os_error(e, path, "cannot write")) from e
