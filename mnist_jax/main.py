"""Command line: `python -m mnist_jax.main --config=configs/mlp.py --workdir=DIR`.

Flags only; the work is `train.train_and_evaluate`, which a notebook can call too.
Bad input ends the run with one `error:` line and exit code 2 (see `cli.py`).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mnist_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/mlp.py or configs/mlp.py:smoke.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes its files.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    from mnist_jax.platform import devices
    from mnist_jax.run import train

    devices.log_startup()
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
