"""mnist_jax: the MLCC MNIST notebook's classifiers in JAX/Flax, faithfully and fast.

The package's folders are its layers (README, "Layout"). Config files written before
that layout (researchers' own, and `best_config.py` of older sweeps) import
`from mnist_jax import config_schema` (or `models`, `optim`, `metrics`): those names
still resolve, with a `DeprecationWarning` giving the new path.
"""

import importlib
import warnings

__version__ = "0.1.0"

_MOVED = {
    "config_schema": "mnist_jax.config.schema",
    "models": "mnist_jax.core.models",
    "optim": "mnist_jax.core.optim",
    "metrics": "mnist_jax.core.metrics",
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'mnist_jax' has no attribute {name!r}")
    warnings.warn(
        f"mnist_jax.{name} moved to {_MOVED[name]}", DeprecationWarning, stacklevel=2
    )
    return importlib.import_module(_MOVED[name])
