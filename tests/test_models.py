import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from mnist_jax.core import models
from mnist_jax.errors import ConfigError


def _config(**overrides):
    base = dict(name="mlp", hidden_units=(100, 100), dropout_rate=0.0)
    return ConfigDict(base | overrides)


def test_linear_shapes_and_zero_init():
    model = models.make_model(_config(name="linear"), seed=0)
    logits = model(jnp.ones((5, 784)))
    assert logits.shape == (5, 10)
    assert not np.any(np.asarray(logits))  # LinearClassifier starts at zero
    assert model.dense.kernel[...].shape == (784, 10)


def test_mlp_shapes_and_glorot_uniform_init():
    model = models.make_model(_config(hidden_units=(100, 50)), seed=0)
    assert model(jnp.ones((3, 784))).shape == (3, 10)
    kernels = [
        model.hidden[0].kernel[...],
        model.hidden[1].kernel[...],
        model.logits.kernel[...],
    ]
    assert [k.shape for k in kernels] == [(784, 100), (100, 50), (50, 10)]
    for kernel in kernels:
        fan_in, fan_out = kernel.shape
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(kernel).max() <= limit
        # uniform on [-limit, limit] has std limit / sqrt(3); lecun-normal would not
        assert np.std(kernel) == pytest.approx(limit / np.sqrt(3), rel=0.1)
    assert not np.any(np.asarray(model.hidden[0].bias[...]))
    assert model.first_layer().shape == (784, 100)


def test_initial_weights_depend_on_seed_only():
    a = nnx.state(models.make_model(_config(), seed=1))
    b = nnx.state(models.make_model(_config(), seed=1))
    c = nnx.state(models.make_model(_config(), seed=2))
    a, b, c = (jax.tree.leaves(s) for s in (a, b, c))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_dropout_only_with_a_key():
    model = models.make_model(_config(dropout_rate=0.5), seed=0)
    x = jax.random.uniform(jax.random.key(0), (4, 784))
    assert np.array_equal(model(x), model(x))
    trained = model(x, dropout_key=jax.random.key(1))
    assert not np.allclose(trained, model(x))
    assert np.array_equal(trained, model(x, dropout_key=jax.random.key(1)))


def test_unknown_model_is_a_config_error_naming_the_choices():
    with pytest.raises(
        ConfigError, match="model.name='nope' is not one of linear, mlp"
    ):
        models.make_model(_config(name="nope"), seed=0)


def test_a_model_holding_other_state_than_params_is_refused():
    class WithBatchNorm(nnx.Module):
        def __init__(self, *, rngs):
            self.dense = nnx.Linear(784, 10, rngs=rngs)
            self.norm = nnx.BatchNorm(10, rngs=rngs)

        def __call__(self, x, *, dropout_key=None):
            return self.norm(self.dense(x))

    registry = models.MODELS
    registry.register("test_batchnorm")(WithBatchNorm)
    try:
        with pytest.raises(ConfigError, match=r"state other than nnx.Param \(norm/"):
            models.make_model(_config(name="test_batchnorm"), seed=0)
    finally:
        registry.unregister("test_batchnorm")


def test_registering_a_field_with_another_default_is_refused():
    with pytest.raises(ValueError, match="model.dropout_rate"):
        models.MODELS.register("test_clash", fields={"dropout_rate": 0.5})(object)
    assert "test_clash" not in models.MODELS.names()


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((3, 784), np.float32),
        np.zeros((3, 28, 28), np.float32),
        np.zeros((3, 28, 28), np.uint8),
        np.full((3, 784), 255, np.uint8),
    ],
    ids=["flat", "square", "uint8", "uint8-255"],
)
def test_restored_models_take_flat_or_square_float_or_uint8_images(images):
    model = models.make_model(_config(), seed=0)
    expected = model(
        jnp.asarray(images.reshape(3, 784), jnp.float32)
        / (255.0 if images.dtype == np.uint8 else 1.0)
    )
    np.testing.assert_allclose(model(images), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "images, message",
    [
        (
            np.zeros((3, 10), np.float32),
            r"shape \(3, 10\).*\(N, 784\) or \(N, 28, 28\)",
        ),
        (np.full((3, 784), 255.0, np.float32), r"values up to 255.*\[0, 1\]"),
        (np.zeros((3, 784), np.int64), "dtype int64"),
    ],
)
def test_images_the_model_cannot_take_are_refused_saying_what_it_expects(
    images, message
):
    model = models.make_model(_config(), seed=0)
    with pytest.raises(ValueError, match=message):
        model(images)
