"""The notebook's linear-classifier exercise as one sweep: learning rate x batch size,
3 seeds each.

    python -m mnist_jax.sweep --config=configs/sweep_linear.py --workdir=runs/sweep_linear \
        --config.data.path=../shared/data/mnist

45 members in 3 groups (one per batch size). `configs/sweep_linear.py:smoke` is the
test variant.

Measured on the notebook data (mean of 3 seeds, two CPU devices): best learning
rate 0.03, batch 100, validation accuracy 0.9099, test accuracy 0.9112; the notebook's batch 30 gives 0.9029 validation. Full table: `sweep.md` in the
sweep's workdir.
"""

from mnist_jax.config import schema as config_schema


def get_config(arg=None):
    config = config_schema.default_config()
    config.model.name = "linear"
    config.optim.learning_rate = 0.03
    config = config_schema.with_sweep(
        config,
        {
            # Adagrad step sizes around the notebook's choice.
            "optim.learning_rate": (0.003, 0.01, 0.03, 0.1, 0.3),
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
        "optim.learning_rate": (0.01, 0.1),
        "train.batch_size": (10, 30),
        "seed": (0, 1),
    }
    return config_schema.with_sweep(config_schema.smoke(config), smoke_axes)
