"""Command line: `python -m mnist_jax.main --config=configs/mlp.py --workdir=DIR`.

Flags only; the work is `train.train_and_evaluate`, which a notebook can call too.
A `UserError` (bad data, config or workdir) ends the run with one line on stderr and
exit code 2; `--debug` or `MNIST_JAX_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from mnist_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/mlp.py or configs/mlp.py:smoke.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes its files.")
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Show tracebacks for user errors (also MNIST_JAX_DEBUG=1)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = _CONFIG.value
        config.keys()  # a config file that failed to load raises only when used
    except OSError as e:
        _fail(f"cannot load --config: {str(e).strip().splitlines()[-1].strip()}")
    # Orbax and JAX log every save and backend probe at INFO; keep the run's own lines.
    for chatty in ("absl", "jax"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    import jax

    from mnist_jax import train

    logging.getLogger("mnist_jax").info(
        "JAX devices: %s (process %d of %d)",
        jax.devices(),
        jax.process_index(),
        jax.process_count(),
    )
    try:
        train.train_and_evaluate(config, _WORKDIR.value)
    except UserError as e:
        if _debug_requested(sys.argv):
            raise
        _fail(str(e))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or bool(os.environ.get("MNIST_JAX_DEBUG"))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with bad flags, overrides and config files reported in one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(" ".join(str(e).split()))
    except (
        AttributeError,
        KeyError,
    ) as e:  # ml_collections: override of an unknown field
        from mnist_jax import config_schema

        overrides = [
            a[len("--config.") :].split("=")[0]
            for a in argv
            if a.startswith("--config.")
        ]
        for name in overrides:
            problem = config_schema.unknown_field_message(name)
            if problem:
                _fail(problem)
        _fail(" ".join(str(e).strip("'\"").split()))
    except Exception as e:  # e.g. a config file that does not run  # noqa: BLE001
        if _debug_requested(argv):
            raise
        _fail(f"cannot load --config: {type(e).__name__}: {e}")


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
