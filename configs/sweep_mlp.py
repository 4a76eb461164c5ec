"""The notebook's MLP exercise as one sweep: learning rate x batch size, 3 seeds each.

    python -m mnist_jax.sweep --config=configs/sweep_mlp.py --workdir=runs/sweep_mlp \
        --config.data.path=../shared/data/mnist

45 members in 3 groups (one per batch size); the 15 members of a group train together
in one compiled program. Axes are tuples, overridable from the command line, e.g.
`--config.sweep.optim.learning_rate='(0.03, 0.1)'`; `configs/sweep_mlp.py:smoke` is
a few-second variant for tests.

Measured on the notebook data (mean of 3 seeds, two CPU devices): best learning rate 0.05, batch 100, validation accuracy 0.9560, test accuracy
0.9573; the notebook's batch 30 gives 0.9464 validation. Full table: `sweep.md` in
the sweep's workdir.
"""

from mnist_jax.config import schema as config_schema


def get_config(arg=None):
    config = config_schema.default_config()
    config.model.name = "mlp"
    config = config_schema.with_sweep(
        config,
        {
            # Adagrad step sizes around the notebook's choice.
            "optim.learning_rate": (0.01, 0.03, 0.05, 0.1, 0.3),
            # The notebook's 30, and a smaller and a larger batch.
            "train.batch_size": (10, 30, 100),
            # Seeds give the error bars.
            "seed": (0, 1, 2),
        },
    )
    return config_schema.variant(config, arg, {"smoke": smoke})


def smoke(config):
    """A few-second sweep for tests: 8 members on the smoke config's data and steps."""
    smoke_axes = {
        "optim.learning_rate": (0.03, 0.1),
        "train.batch_size": (10, 30),
        "seed": (0, 1),
    }
    return config_schema.with_sweep(config_schema.smoke(config), smoke_axes)
