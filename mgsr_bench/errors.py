"""The one exception type that the CLI turns into a single clear line and a non-zero exit."""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix, and nothing ran yet."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UserError:
    """``unknown <kind> 'x' (did you mean 'y'?); known <kind>s: ...`` as a ``UserError``."""
    known = list(known)
    hint = difflib.get_close_matches(name, known, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return UserError(f"unknown {kind} {name!r}{did_you_mean}; known {kind}s: {', '.join(known)}")
