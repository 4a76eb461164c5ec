import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from mnist_jax import models
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
    assert model.first_layer_kernel.shape == (784, 100)


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


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="model.name='cnn'"):
        models.make_model(_config(name="cnn"), seed=0)
