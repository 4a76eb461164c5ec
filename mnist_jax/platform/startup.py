"""Start-up speed, in one place. Compiling a run's programs and importing its libraries
would be half of a short run, so it overlaps them with its other work (each choice's
measurement: docs/performance.md, "Why the code is as it is"):

- Programs compile ahead of time on one worker thread (`Compiler`): XLA releases the
  GIL, so the training program compiles on a second core while the main thread loads
  the data, opens the checkpoints and writes its files.
- Programs that run once (initialisation, final evaluation) or once per epoch (the
  epoch's row order, a sort) compile with cheap XLA options (`RUN_ONCE_OPTIONS`):
  LLVM's optimisation passes cost more than they save there.
- Libraries slow to import load when first needed (`orbax`, `pandas`)
  or, for matplotlib, on a thread once training has started
  (`preload_figures`); during compilation, which keeps both cores busy, it only
  delayed the training program.
- The command line ends without the interpreter's teardown (`exit_without_teardown`),
  once its files are closed and every non-daemon thread has finished.

Everything else is plain code: delete a trick here and the run is the same, only slower.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import jax

RUN_ONCE_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}

# XLA:CPU hands some reductions (and products) to YNNPACK, choosing by shape, and
# YNNPACK adds up in another order than XLA's own loops. A sweep's shapes are its
# members' times a single run's, so the same sum landed on different sides for a member
# and its single run (the bias gradient over 30 rows, the log-softmax over the classes,
# the evaluation's product for all members at once), and they drifted apart. Without
# YNNPACK every program adds up per member as a single run does, at no measured cost
# on this CPU (docs/performance.md).
CPU_REPRODUCIBLE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def jit(fn, *, run_once: bool = False, **jit_kwargs):
    """`jax.jit` with the compiler options every program of the package takes:
    `RUN_ONCE_OPTIONS` for one run once, and on a CPU `CPU_REPRODUCIBLE_OPTIONS`."""
    options = dict(RUN_ONCE_OPTIONS) if run_once else {}
    if jax.default_backend() == "cpu":
        options |= CPU_REPRODUCIBLE_OPTIONS
    return jax.jit(fn, compiler_options=options or None, **jit_kwargs)


class Compiler:
    """Compiles jitted functions ahead of time, in order, on one worker thread. Tracing
    stays on the calling thread; only XLA's `compile` runs in the worker."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1)

    def submit(self, jitted, *args) -> Future:
        """The future compiled program for `args` (arrays or `jax.ShapeDtypeStruct`s)
        of `jitted` (a `jit`)."""
        return self._pool.submit(jitted.lower(*args).compile)

    def __enter__(self) -> Compiler:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)


def compile_once(fn, *args):
    """`fn` compiled for `args` with the cheap options (for a program run once or a few
    times, where compile time outweighs run time)."""
    return jit(fn, run_once=True).lower(*args).compile()


def orbax():
    """`orbax.checkpoint`, slow to import: a run imports it while compiling."""
    import orbax.checkpoint as ocp

    return ocp


def pandas():
    """pandas, slow to import: only parsing a data file or writing a table needs it."""
    import pandas as pd

    return pd


def preload_figures() -> None:
    """Imports matplotlib on a daemon thread, so a run's figures do not wait for it."""
    threading.Thread(target=_import_matplotlib, daemon=True).start()


def _import_matplotlib() -> None:
    import matplotlib.figure  # noqa: F401


def use_persistent_cache(path: str | None) -> None:
    """Keeps compiled programs in `path` (None: in none), so a repeated run or a
    restarted sweep loads them instead of compiling: every program, however quick to
    compile, since a run's few programs are each under a second. The command lines
    call this; a notebook may too."""
    if path is not None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            usable = os.access(path, os.W_OK)
        except OSError:
            usable = False
        if not usable:
            logging.getLogger(__name__).warning(
                "compilation cache %s cannot be written: compiling every program "
                "(--compilation_cache_dir to put it elsewhere)",
                path,
            )
            path = None
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def persistent_cache() -> str | None:
    """The folder compiled programs are kept in, None when off (for run_info.json)."""
    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir or None


def exit_without_teardown(code: int = 0) -> None:
    """Ends a finished program the quick way: runs the atexit handlers (JAX's multi-host
    shutdown, logging's flushes) but skips the interpreter's teardown of ~2,000 modules
    and XLA's static destructors. Call it only once every file the
    program wrote is closed.

    While a non-daemon thread (a writer, a profiler) still runs, `os._exit` would kill
    it mid-work: then it exits the normal way, whose thread shutdown waits for it (and
    first stops `concurrent.futures`' idle workers, on which a plain `join` would wait
    forever)."""
    current = threading.current_thread()
    if any(
        t is not current and t is not threading.main_thread() and not t.daemon
        for t in threading.enumerate()
    ):
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
