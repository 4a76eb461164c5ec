"""Ctrl-C and SIGTERM (preemption) without lost work: the training loop is told, finishes
its chunk, saves a checkpoint and stops; a second signal stops at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred() -> Iterator[list[int]]:
    """Within the block, SIGINT/SIGTERM are recorded in the yielded list instead of
    killing the process. Only the main thread can install handlers; elsewhere (a
    notebook's worker thread) signals keep their usual meaning."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
