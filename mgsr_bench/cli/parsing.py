"""What every ``mgsr-bench`` parser shares: one-line usage errors and checked numbers."""

from __future__ import annotations

import argparse
import math
import re
from datetime import datetime

from mgsr_bench.errors import UserError

SEED_MAX = 2 ** 64 - 1  # torch's generators take seeds from 0 to 2^64 - 1


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


def train_seeds(text: str | None) -> tuple[int, ...] | None:
    """``--train-seeds 1,2,3``: distinct seeds from 0 to 2^64 - 1 (what torch's generators take),
    checked before any compute; None when the option is not given."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"[+-]?[0-9]+", part) for part in parts):
        raise UserError(f"--train-seeds takes comma-separated integers such as 1,2,3, got {text!r}")
    seeds = tuple(int(part) for part in parts)
    for seed in seeds:
        if not 0 <= seed <= SEED_MAX:
            problem = "is negative" if seed < 0 else "does not fit in 64 bits"
            raise UserError(f"--train-seeds: seed {seed} {problem}; give seeds from 0 to {SEED_MAX}")
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if twice:
        raise UserError(f"--train-seeds names seed {twice[0]} twice: give each seed once")
    return seeds
