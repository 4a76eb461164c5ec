"""Models by name (`config.model.name`): the notebook's two classifiers, initialised as
TF1's canned ones, and the contract any other model keeps.

A model is an `nnx.Module` class registered with `@MODELS.register(name, fields=...)`;
`fields` are the `config.model.*` fields it takes as keyword arguments (with defaults).
The training path splits it once into a graph and its parameters and trains them as a
pure pytree, `jax.vmap`-ed over a sweep's members, so a model must:
- hold only `nnx.Param` state: no batch statistics, no `nnx.Rngs` or other variables
  (`make_model` refuses such a model, naming the offending state);
- map `__call__(x, *, dropout_key=None)` to logits (N, 10), where `x` is (N, 784) float
  pixels in [0, 1] (start with `x = pixels(x)` to also accept (N, 28, 28) and uint8), and
  draw any training randomness from `dropout_key` (None when evaluating);
- optionally define `first_layer()`: its first layer's weights (inputs, units), inputs a
  square image (28x28 pixels for a dense layer, k x k for a convolution), which the run's
  `first_layer_weights.png` and `experiments/weight_evolution.py` draw and measure; and
  `first_layer_activity(x)` (N, units) and `first_layer_outgoing()` (units, next), with
  which the analysis counts dead units and units the next layer ignores;
- optionally define `representations(x)`: {layer name: (N, units)}, the activations
  `analysis/similarity.py` compares by CKA (default: the logits alone), and a static
  `filter_axis(path, shape)`: the axis of a parameter that indexes its filters, or None
  to leave it out, for the filter-normalised directions of `analysis/landscape.py`
  (default: a kernel's last axis, its output units; biases left out).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mnist_jax.data.readers import NUM_CLASSES
from mnist_jax.errors import ConfigError
from mnist_jax.registry import Registry

NUM_PIXELS = 784
IMAGE_SHAPE = (28, 28)

MODELS = Registry("model")


def pixels(x) -> jax.Array:
    """(N, 784) float pixels in [0, 1] from (N, 784) or (N, 28, 28) images, float in
    [0, 1] or uint8 in 0..255; anything else is refused, saying what is expected."""
    shape, dtype = tuple(x.shape), np.dtype(x.dtype)
    if shape[1:] not in ((NUM_PIXELS,), IMAGE_SHAPE):
        raise ValueError(
            f"images of shape {shape}: expected (N, 784) or (N, 28, 28) MNIST digits"
        )
    x = jnp.reshape(x, (shape[0], NUM_PIXELS))
    if dtype == np.uint8:
        return x.astype(jnp.float32) / 255.0
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"images of dtype {dtype}: expected float pixels in [0, 1] or uint8 0..255"
        )
    if not isinstance(x, jax.core.Tracer) and x.size and float(jnp.max(x)) > 1.0:
        raise ValueError(
            f"float images with values up to {float(jnp.max(x)):g}: expected pixels "
            "scaled to [0, 1] (divide by 255, or pass uint8)"
        )
    return x


@MODELS.register("linear")
class Linear(nnx.Module):
    """Softmax regression; zero weights and bias, as `tf.estimator.LinearClassifier`."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(
            NUM_PIXELS,
            NUM_CLASSES,
            kernel_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(self, x, *, dropout_key: jax.Array | None = None) -> jax.Array:
        del dropout_key  # nothing random in a linear model
        return self.dense(pixels(x))

    def first_layer(self) -> jax.Array:
        """(784, 10): each class's template over the pixels."""
        return self.dense.kernel[...]


def _check_mlp(hidden_units, dropout_rate) -> None:
    if (
        not isinstance(hidden_units, tuple | list)
        or not hidden_units
        or any(
            isinstance(h, bool) or not isinstance(h, int) or h <= 0
            for h in hidden_units
        )
    ):
        raise ConfigError(
            f"model.hidden_units={hidden_units!r} must be a tuple of positive integers"
        )
    if not 0.0 <= dropout_rate < 1.0:
        raise ConfigError(f"model.dropout_rate={dropout_rate!r} must be in [0, 1)")


@MODELS.register(
    "mlp",
    fields={"hidden_units": (100, 100), "dropout_rate": 0.0},
    check=_check_mlp,
)
class MLP(nnx.Module):
    """ReLU hidden layers of `hidden_units` widths then logits, as
    `tf.estimator.DNNClassifier`: glorot-uniform kernels, zero biases, and dropout at
    `dropout_rate` after each hidden layer when training."""

    def __init__(
        self, hidden_units: Sequence[int], dropout_rate: float, *, rngs: nnx.Rngs
    ):
        sizes = (NUM_PIXELS, *hidden_units)
        glorot = nnx.initializers.glorot_uniform()
        self.hidden = nnx.List(
            nnx.Linear(n_in, n_out, kernel_init=glorot, rngs=rngs)
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.logits = nnx.Linear(sizes[-1], NUM_CLASSES, kernel_init=glorot, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(self, x, *, dropout_key: jax.Array | None = None) -> jax.Array:
        x = pixels(x)
        for i, layer in enumerate(self.hidden):
            x = jax.nn.relu(layer(x))
            if dropout_key is not None and self.dropout.rate > 0:
                x = self.dropout(
                    x, deterministic=False, rngs=jax.random.fold_in(dropout_key, i)
                )
        return self.logits(x)

    def first_layer(self) -> jax.Array:
        """(784, units): column j is unit j's weights, a 28x28 image when reshaped."""
        return self.hidden[0].kernel[...]

    def representations(self, x) -> dict[str, jax.Array]:
        """Each hidden layer's ReLU output (`hidden_1`, ...) and the logits."""
        layers, x = {}, pixels(x)
        for i, layer in enumerate(self.hidden):
            x = layers[f"hidden_{i + 1}"] = jax.nn.relu(layer(x))
        return layers | {"logits": self.logits(x)}

    def first_layer_activity(self, x) -> jax.Array:
        return jax.nn.relu(self.hidden[0](pixels(x)))

    def first_layer_outgoing(self) -> jax.Array:
        """(units, next): the weights that carry each first-layer unit onwards."""
        following = self.hidden[1] if len(self.hidden) > 1 else self.logits
        return following.kernel[...]


def make_model(model_config, seed: int | jax.Array) -> nnx.Module:
    """The model `model_config.name` names, its initial weights drawn from `seed`."""
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), 1))
    model = MODELS.entry(model_config.name).build(
        **MODELS.arguments(model_config), rngs=rngs
    )
    check_contract(model, model_config.name)
    return model


def check_contract(model: nnx.Module, name: str) -> None:
    """Refuses state the training path would drop: anything but `nnx.Param`."""
    others = nnx.state(model, nnx.Not(nnx.Param))
    paths = ["/".join(map(str, path)) for path, _ in nnx.to_flat_state(others) if path]
    if paths:
        raise ConfigError(
            f"model {name!r} holds state other than nnx.Param ({', '.join(paths[:3])}"
            f"{', ...' if len(paths) > 3 else ''}); training keeps params only: make it "
            "a Param, or compute it from dropout_key (see mnist_jax/models.py)"
        )
