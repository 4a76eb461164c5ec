"""The notebook's two classifiers as Flax NNX modules, initialised as TF1's canned ones."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from mnist_jax.errors import ConfigError

NUM_PIXELS = 784
NUM_CLASSES = 10


class Linear(nnx.Module):
    """Softmax regression; zero weights and bias, as `tf.estimator.LinearClassifier`."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(
            NUM_PIXELS,
            NUM_CLASSES,
            kernel_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(
        self, x: jax.Array, *, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        del (
            dropout_key
        )  # no dropout in a linear model; the argument keeps one signature
        return self.dense(x)


class MLP(nnx.Module):
    """ReLU hidden layers then logits, as `tf.estimator.DNNClassifier`: glorot-uniform
    kernels, zero biases, dropout after each hidden layer when training."""

    def __init__(
        self, hidden_units: Sequence[int], dropout_rate: float = 0.0, *, rngs: nnx.Rngs
    ):
        sizes = (NUM_PIXELS, *hidden_units)
        self.hidden = nnx.List(
            nnx.Linear(
                n_in, n_out, kernel_init=nnx.initializers.glorot_uniform(), rngs=rngs
            )
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.logits = nnx.Linear(
            sizes[-1],
            NUM_CLASSES,
            kernel_init=nnx.initializers.glorot_uniform(),
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(
        self, x: jax.Array, *, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """`dropout_key` turns dropout on (training); None is evaluation."""
        for i, layer in enumerate(self.hidden):
            x = jax.nn.relu(layer(x))
            if dropout_key is not None and self.dropout.rate > 0:
                x = self.dropout(
                    x, deterministic=False, rngs=jax.random.fold_in(dropout_key, i)
                )
        return self.logits(x)

    @property
    def first_layer_kernel(self) -> jax.Array:
        """(784, units): column j is unit j's weights, a 28x28 image when reshaped."""
        return self.hidden[0].kernel[...]


def make_model(model_config, seed: int) -> Linear | MLP:
    """Builds the model `model_config.name` names; its initial weights depend on `seed`."""
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), 1))
    if model_config.name == "linear":
        return Linear(rngs=rngs)
    if model_config.name == "mlp":
        return MLP(
            tuple(model_config.hidden_units), model_config.dropout_rate, rngs=rngs
        )
    raise ConfigError(f"model.name={model_config.name!r} is not one of linear, mlp")
