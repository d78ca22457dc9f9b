"""SIGTERM ends a single process as Ctrl-C does.

Schedulers, ``timeout``, ``docker stop`` and launchers stop a process with SIGTERM, whose default
ends it on the spot: a file or folder being written under a temporary name (checkpoints, records,
a saved model, a suite build) stays behind. Under :func:`sigterm_as_exit` SIGTERM raises
``SystemExit(143)`` instead, so the cleanup that Ctrl-C's ``KeyboardInterrupt`` runs runs too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block SIGTERM raises ``SystemExit(128 + SIGTERM)`` (in the main thread; elsewhere
    nothing changes). Only around work that runs in one process: a process waiting in a collective
    runs Python's handler only when the C call returns, so it would no longer stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def launched_processes() -> int:
    """How many processes this run was launched on (1 without a launcher): torchrun and accelerate
    set ``WORLD_SIZE`` before Python starts, so this is known before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))
