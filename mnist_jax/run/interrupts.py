"""Ctrl-C and SIGTERM (preemption) without lost work: the training loop is told, finishes
its chunk, saves a checkpoint and stops; a second signal stops at once. In a multi-host
run the processes agree after each chunk, so a signal to any one stops them all at the
same step (stopping alone would leave the others waiting in the next collective)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import jax
import numpy as np

from mnist_jax.errors import Interrupted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stopped(received: list[int], where: str, saved: str) -> Interrupted:
    """The error that ends a run or sweep a signal stopped: which signal, where, what
    was saved, and that the same command resumes. Logged to train.log only: the command
    line prints it once, as its error."""
    name = signal.Signals(received[0]).name
    message = f"interrupted by {name} {where}: {saved}; run the same command to resume"
    log.warning("%s", message, extra={"console": False})
    return Interrupted(message, received[0])


@contextlib.contextmanager
def deferred() -> Iterator[list[int]]:
    """Within the block, SIGINT/SIGTERM are recorded in the yielded list instead of
    killing the process. Only the main thread can install handlers; elsewhere (a
    notebook's worker thread) signals keep their usual meaning."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    caught: list[int] = []  # this process's own signals (`agree` adds others'
    # to `received`: a preemption reaching every process is not a second signal here)

    def handler(signum, frame):
        if caught:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        caught.append(signum)
        if not received:
            received.append(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def agree(received: list[int]) -> list[int]:
    """Whether to stop, decided by every process alike: `received` (to which another
    process's signal is added if this one got none) when any process has received a
    signal, else an empty list. One process alone decides by itself; several exchange
    a snapshot of their first signal (a 4-byte all-gather per chunk), and decide on
    that snapshot only, so a signal arriving meanwhile counts at the next chunk."""
    if jax.process_count() == 1:
        return received
    from jax.experimental import multihost_utils

    mine = received[0] if received else 0
    signals = multihost_utils.process_allgather(np.int32(mine))
    first = next((int(s) for s in np.ravel(signals) if s), 0)
    if not first:
        return []
    if not received:
        received.append(first)
    return received
