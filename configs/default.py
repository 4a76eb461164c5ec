"""Defaults for every field: the notebook's MLP experiment, explained field by field in
`mnist_jax/config_schema.py`.

    python -m mnist_jax.main --config=configs/default.py --workdir=runs/mnist_default

`configs/default.py:smoke` is a few-second offline variant for tests.
"""

from mnist_jax.config import schema as config_schema


def get_config(arg=None):
    config = config_schema.default_config()
    return config_schema.variant(config, arg, {"smoke": config_schema.smoke})
