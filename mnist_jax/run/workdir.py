"""A run's folder: the files it must hold and the facts about the machine it records."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from mnist_jax.config import parts
from mnist_jax.errors import UserError
from mnist_jax.platform import startup
from mnist_jax.run import writers

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
RESULTS_FILE = "results.json"
LOCK_FILE = ".lock"
LOG_FILE = "train.log"


def prepare(workdir: str | os.PathLike) -> Path:
    """Creates `workdir` if needed; a one-line error if it cannot hold a run."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"workdir {workdir} exists and is not a folder")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"workdir {workdir} cannot be created ({e.strerror})") from None
    if not os.access(workdir, os.W_OK):
        raise UserError(f"workdir {workdir} is not writable")
    return workdir


@contextlib.contextmanager
def lock(workdir: Path) -> Iterator[None]:
    """One run per workdir. An OS lock (`flock`) on `WORKDIR/.lock` is released by the
    kernel when its process dies, even by SIGKILL, so a stale lock is simply free.

    Every process of a run enters this: process 0 takes the lock and tells the others
    whether it could, so a refusal is the same one-line `UserError` on every process,
    never one process gone and the others waiting in a barrier."""
    handle, problem = None, ""
    if jax.process_index() == 0:
        try:
            handle = _acquire(workdir)
        except UserError as e:
            problem = str(e)
    problem = from_process_zero(problem)
    if problem:
        if handle is not None:
            handle.close()
        raise UserError(problem)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # closing releases the lock


def _acquire(workdir: Path):
    path = workdir / LOCK_FILE
    try:
        handle = open(path, "a+")  # noqa: SIM115 (held until the run ends)
    except OSError as e:
        raise UserError(f"cannot open {path} ({e.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(
            f"workdir {workdir} is in use by {holder}; wait for it to finish or "
            "use another --workdir"
        ) from None
    except OSError as e:  # e.g. ENOSYS, EOPNOTSUPP, ENOLCK: no locks on this filesystem
        handle.close()
        raise UserError(
            f"cannot lock {path} ({e.strerror or e}): its filesystem does not support "
            "file locks; use a --workdir on a local or lock-capable filesystem"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(
        f"process {os.getpid()} on {platform.node()} since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    )
    handle.flush()
    return handle


def from_process_zero(message: str, size: int = 1024) -> str:
    """Process 0's `message`, on every process (a no-op for a single process)."""
    if jax.process_count() == 1:
        return message
    from jax.experimental import multihost_utils

    encoded = message.encode()[:size].ljust(size, b"\0")
    shared = multihost_utils.broadcast_one_to_all(np.frombuffer(encoded, np.uint8))
    return bytes(np.asarray(shared, np.uint8)).rstrip(b"\0").decode(errors="replace")


@contextlib.contextmanager
def log_file(workdir: Path) -> Iterator[None]:
    """Copies the run's own log lines (not the libraries') to `WORKDIR/train.log`,
    appending, so a resumed run's history reads in order."""
    handler = logging.FileHandler(workdir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("mnist_jax")
    level = logger.level
    if (
        logger.getEffectiveLevel() > logging.INFO
    ):  # e.g. in a notebook: still log to file
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def environment() -> dict:
    """Versions, devices and command, for `run_info.json`."""
    import flax
    import optax
    import orbax.checkpoint

    return {
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "orbax-checkpoint": getattr(orbax.checkpoint, "__version__", None),
            "numpy": np.__version__,
        },
        "platform": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": [str(d) for d in jax.devices()],
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "host": platform.node(),
        "command": " ".join(sys.argv),
        # Where compiled programs were loaded from or kept (`startup`); None: off.
        "compilation_cache": startup.persistent_cache(),
    }


def recorded_parts(workdir: str | os.PathLike) -> dict[str, str] | None:
    """run_info.json's `registered_parts` (`config.parts`): where the parts the run
    used were defined; None for a new folder or a run from before it was recorded."""
    path = Path(workdir) / RUN_INFO_FILE
    if not path.is_file():
        return None
    recorded = writers.read_json(path).get(parts.RUN_INFO_KEY)
    if recorded is not None and not (
        isinstance(recorded, dict)
        and all(isinstance(v, str) for v in recorded.values())
    ):
        raise UserError(f"{path}: {parts.RUN_INFO_KEY} is not a table of part -> file")
    return recorded
