"""What every command line here shares: absl flags, and user errors as one line.

A `UserError` (bad data, config, workdir or step) ends the program with one line on
stderr and exit code 2; `--debug` or `MNIST_JAX_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from absl import app, flags

from mnist_jax.errors import Interrupted, UserError

flags.DEFINE_bool(
    "debug", False, "Show tracebacks for errors (also MNIST_JAX_DEBUG=1)."
)
_CACHE = flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Keep compiled programs on disk, so a repeated run, or a preempted sweep "
    "restarting, skips compiling (--nocompilation_cache: off).",
)
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "Where compiled programs are kept. Default: $MNIST_JAX_COMPILATION_CACHE, else "
    "JAX's own $JAX_COMPILATION_CACHE_DIR, else the per-user cache folder's xla/ "
    "(~/.cache/mnist_jax/xla, or under $MNIST_JAX_CACHE or $XDG_CACHE_HOME).",
)


def compilation_cache_dir() -> str | None:
    """The persistent compilation cache the flags ask for (None: off)."""
    if not _CACHE.value:
        return None
    if _CACHE_DIR.value:
        return _CACHE_DIR.value
    for variable in ("MNIST_JAX_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        if os.environ.get(variable):
            return os.environ[variable]
    from mnist_jax.data import download

    return str(download.cache_dir() / "xla")


_IMPORT = flags.DEFINE_multi_string(
    "import",
    [],
    "A Python file or module to import first, for the models, optimizers, metrics or "
    "data sets it registers (a run records where its own came from; this gives "
    "another place). Repeat for more.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0's coordinator."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids",
    None,
    "Multi-host: the ids of the local devices this process uses, e.g. 0 or 0,1 (one "
    "process per GPU). Default: all the host's devices, or what the cluster says.",
)


# The environment variables by which `jax.distributed.initialize()` without arguments
# recognises a cluster it can bootstrap from (as JAX's cluster detection reads them,
# checked against jax 0.10; JAX keeps that code private, so it is not imported).
CLUSTER_VARIABLES = {
    "SLURM": (
        "SLURM_JOB_ID",
        "SLURM_STEP_NODELIST",
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "SLURM_LOCALID",
    ),
    "Open MPI": ("OMPI_MCA_orte_hnp_uri",),
    "Cloud TPU on GKE": ("TPU_WORKER_HOSTNAMES",),
    "Cloud TPU (multi-host)": ("TPU_PROCESS_ADDRESSES",),
    "JAX_COORDINATOR_ADDRESS": ("JAX_COORDINATOR_ADDRESS",),
}


def cluster_detected() -> str | None:
    """The cluster this process runs in (`CLUSTER_VARIABLES`), or None. Other methods
    (mpi4py, Kubernetes with its client) are opt-in: call
    `jax.distributed.initialize(...)` from your own script, or pass --coordinator."""
    for cluster, names in CLUSTER_VARIABLES.items():
        if all(os.environ.get(name) for name in names):
            return cluster
    return None


def init_distributed() -> None:
    """Joins JAX's distributed runtime when asked to by flags, or whenever JAX detects
    a cluster it can bootstrap from; a single process elsewhere does nothing. CPU
    processes exchange gradients over gloo, so this runs anywhere."""
    import jax

    explicit = _COORDINATOR.value is not None
    if not (explicit or cluster_detected()):
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    local_device_ids = None
    if _LOCAL_DEVICE_IDS.value:
        try:
            local_device_ids = [int(i) for i in _LOCAL_DEVICE_IDS.value]
        except ValueError:
            fail(
                f"--local_device_ids={','.join(_LOCAL_DEVICE_IDS.value)}: not integers"
            )
    if explicit:
        jax.distributed.initialize(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            local_device_ids=local_device_ids,
        )
    else:
        jax.distributed.initialize(local_device_ids=local_device_ids)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or bool(os.environ.get("MNIST_JAX_DEBUG"))


def config_arg(argv: list[str]) -> str | None:
    """The value `argv` gives `--config` (`--config=F`, `--config F`, one dash or two)."""
    for i, arg in enumerate(argv[1:], start=1):
        name, eq, value = arg.partition("=")
        if name in ("--config", "-config"):
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with bad flags, overrides and config files reported in one line."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        # Without --config, absl blames the first override (`--config.data.path` is
        # defined only by loading a config file) or says the value is None.
        if (
            "config" in flags.FLAGS
            and not flags.FLAGS["config"].present
            and config_arg(argv) is None
        ):
            fail(f"--config is missing ({flags.FLAGS['config'].help.rstrip('.')})")
        fail(" ".join(str(e).split()))
    except (
        AttributeError,
        KeyError,
    ) as e:  # ml_collections: override of an unknown field
        from mnist_jax.config import schema as config_schema

        for arg in argv:
            if arg.startswith("--config."):
                name = arg[len("--config.") :].split("=")[0]
                problem = config_schema.unknown_field_message(name)
                if problem:
                    fail(problem)
        fail(" ".join(str(e).strip("'\"").split()))
    except UserError as e:  # e.g. get_config refusing an unknown `FILE:variant`
        if debug_requested(argv):
            raise
        value = config_arg(argv)
        fail(f"--config={value}: {e}" if value else str(e))
    except Exception as e:  # e.g. a config file that does not run
        if debug_requested(argv):
            raise
        fail(f"cannot load --config: {type(e).__name__}: {e}")
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
        check_config(flags.FLAGS.config, config_arg(argv))
    return remaining


def check_config(config, spec: str | None) -> None:
    """Ends the program in one line if `--config` did not give a `ConfigDict`: a file
    that failed to load (ml_collections raises its error only once the config is
    used) or a `get_config()` that returned something else."""
    from ml_collections import ConfigDict

    from mnist_jax.config import files as config_files

    if isinstance(config, ConfigDict):
        return
    try:
        config.keys()  # a failed load raises its error here
    except OSError as e:
        fail(f"cannot load --config: {str(e).strip().splitlines()[-1].strip()}")
    except AttributeError:  # not a mapping: said below
        pass
    except Exception as e:
        fail(f"cannot load --config: {type(e).__name__}: {e}")
    try:
        config_files.check_loaded(config, spec)
    except UserError as e:
        fail(str(e))


def on_console(record: logging.LogRecord) -> bool:
    """Whether a log line goes to the console: not one logged with
    `extra={"console": False}`, a line for `train.log` that the program prints itself
    (an interruption's message, printed once as its `error:` line)."""
    return getattr(record, "console", True)


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` with one-line user errors, quiet library logs and a quick
    exit."""

    def guarded(argv):
        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        from mnist_jax.platform import startup

        # Orbax and JAX log every save and backend probe at INFO; keep our own lines.
        for chatty in ("absl", "jax"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(on_console)
        startup.use_persistent_cache(compilation_cache_dir())
        init_distributed()
        try:
            from mnist_jax.config import parts

            for spec in _IMPORT.value:
                parts.import_file(spec)
            main(argv)
        except UserError as e:
            if debug_requested(sys.argv):
                raise
            fail(str(e))
        except Interrupted as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        startup.exit_without_teardown(0)

    app.run(guarded, flags_parser=parse_flags)
