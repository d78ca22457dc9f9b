"""What every ``mgsr-bench`` parser shares: one-line usage errors and checked numbers."""

from __future__ import annotations

import argparse
import math
from datetime import datetime


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, as the project's other errors are
    (argparse prints its usage block first), pointing at ``--help`` for the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """A float option's value: ``nan`` and ``inf`` parse as floats but pass no range check (nan
    compares false), so they are refused here."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def iso_date(text: str) -> str:
    """A date or date-time filter, kept as written (records' ``created`` compare as ISO text) once
    it parses: a typo would otherwise match nothing and read as an empty store."""
    try:
        datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date such as 2026-12-01 or 2026-12-01T12:00, "
                                         f"got {text!r}") from None
    return text
