"""Command line: `python -m mnist_jax.sweep --config=configs/sweep_mlp.py --workdir=W`.

Flags only; the work is `runner.run_sweep`, which a notebook can call too.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mnist_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Sweep config file, e.g. configs/sweep_mlp.py or configs/sweep_mlp.py:smoke.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the sweep writes its files.")
_AXIS = flags.DEFINE_multi_string(
    "axis",
    [],
    "NAME=VALUES: sweep any config field over a tuple of values, e.g. "
    "--axis=model.hidden_units='((50,), (100, 100))'; repeat for more axes. "
    "Replaces the config's axis of that name.",
)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    None,
    "JAX devices to split a CPU host into (members shard over them). "
    "Default: one per core, unless XLA_FLAGS sets a device count.",
    lower_bound=1,
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    del argv
    from mnist_jax.platform import devices
    from mnist_jax.sweep import grid, runner

    devices.use_cpu_cores(_CPU_DEVICES.value)
    devices.log_startup()
    runner.run_sweep(grid.add_axes(_CONFIG.value, _AXIS.value or []), _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
