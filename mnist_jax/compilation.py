"""Ahead-of-time compilation, off the main thread.

XLA releases the GIL while it compiles, so a run's programs compile on the second core
while the main thread initialises and writes its files. Tracing stays on the calling
thread; only `Lowered.compile` runs in the pool.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future

import jax

# For programs that run once (initialisation, final evaluation), LLVM's optimisation
# passes cost more compile time than they save: ~1.4 s less start-up on a CPU.
RUN_ONCE_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def compile_async(
    executor: Executor, jitted, *args, options: dict | None = None
) -> Future:
    """Traces `jitted` for `args` (arrays or `jax.ShapeDtypeStruct`s) here and compiles
    it in `executor`; the future's result is the compiled program."""
    lowered = jitted.lower(*args)
    return executor.submit(lowered.compile, compiler_options=options)


def run_once(fn, *args, out_shardings=None):
    """Compiles `fn` for `args` with cheap options and calls it."""
    jitted = (
        jax.jit(fn)
        if out_shardings is None
        else jax.jit(fn, out_shardings=out_shardings)
    )
    lowered = jitted.lower(*args)
    return lowered.compile(compiler_options=RUN_ONCE_OPTIONS)(*args)


def enable_persistent_cache(path: str) -> None:
    """Opt-in: keep compiled programs in `path`, so a repeated run skips compilation."""
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
