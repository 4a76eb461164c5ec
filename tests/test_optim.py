"""The compiled training step against a NumPy transcription of TF1's update rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from mnist_jax.config import schema as config_schema
from mnist_jax.core import models, optim, steps
from mnist_jax.data import Dataset
from mnist_jax.errors import ConfigError
from mnist_jax.run import loop
from mnist_jax.sweep import runner


def _numpy_tf1_linear(x, y, lr, clip, num_steps, reduction):
    """Softmax regression from zeros; clip_by_global_norm then Adagrad(accumulator 0.1,
    no epsilon), exactly as TF1's optimizers write it."""
    w, b = np.zeros((784, 10)), np.zeros(10)
    acc_w, acc_b = np.full_like(w, 0.1), np.full_like(b, 0.1)
    onehot = np.eye(10)[y]
    norms = []
    for _ in range(num_steps):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dlogits = p - onehot
        if reduction == "mean":
            dlogits /= len(y)
        gw, gb = x.T @ dlogits, dlogits.sum(0)
        norm = np.sqrt((gw**2).sum() + (gb**2).sum())
        norms.append(norm)
        if norm > clip:
            gw, gb = gw * clip / norm, gb * clip / norm
        acc_w += gw**2
        acc_b += gb**2
        w -= lr * gw / np.sqrt(acc_w)
        b -= lr * gb / np.sqrt(acc_b)
    return w, b, norms


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_train_steps_match_numpy_tf1_reference(reduction):
    rng = np.random.default_rng(0)
    num_rows, num_train = 64, 48
    pool_x = rng.integers(0, 256, size=(num_rows, 784)).astype(np.float32) / 255.0
    pool_y = rng.integers(0, 10, size=num_rows).astype(np.int32)
    data = Dataset(
        jnp.asarray(pool_x),
        jnp.asarray(pool_y),
        jnp.asarray(pool_x),
        jnp.asarray(pool_y),
    )
    model = models.make_model(ConfigDict(dict(name="linear")), seed=0)
    graphdef, params = nnx.split(model)
    # One batch = the whole training set, so the sum over it does not depend on order.
    program = steps.Program(graphdef, batch_size=num_train, loss_reduction=reduction)
    member = steps.Member(
        train_idx=jnp.arange(num_train),
        val_idx=jnp.arange(num_train, num_rows),
        key=jax.random.key(0),
        learning_rate=jnp.float32(0.03),
        clip_norm=jnp.float32(5.0),
    )
    orders = loop.orders_for(program, member, 0, 5)
    state, nonfinite = jax.jit(program.train_steps, static_argnums=1)(
        program.init_state(params), 5, data, member, orders
    )
    assert int(nonfinite) == -1

    w, b, norms = _numpy_tf1_linear(
        pool_x[:num_train].astype(np.float64),
        pool_y[:num_train],
        0.03,
        5.0,
        5,
        reduction,
    )
    if reduction == "sum":
        assert norms[0] > 5.0  # the clip really fires, as in the notebook
    assert int(state.step) == 5
    np.testing.assert_allclose(state.params["dense"]["kernel"][...], w, atol=1e-5)
    np.testing.assert_allclose(state.params["dense"]["bias"][...], b, atol=1e-5)


@pytest.mark.parametrize(
    "accumulator", [0.01, 1.0, optim.TF1_ADAGRAD_INITIAL_ACCUMULATOR]
)
@pytest.mark.parametrize("grad_scale", [0.01, 100.0])  # under and over the clip norm
def test_update_and_state_are_optax_clip_then_adagrad(
    monkeypatch, accumulator, grad_scale
):
    """For any initial accumulator: the same state types as
    `optax.chain(clip_by_global_norm, adagrad)` (checkpoints hold optax's own), and the
    same update to float rounding, clipped or not."""
    monkeypatch.setattr(optim, "TF1_ADAGRAD_INITIAL_ACCUMULATOR", accumulator)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((784, 10)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.standard_normal((784, 10)) * grad_scale, jnp.float32)}
    ours = optim.make_optimizer("adagrad", 0.03, 5.0)
    reference = optax.chain(
        optax.clip_by_global_norm(5.0),
        optax.adagrad(0.03, initial_accumulator_value=accumulator, eps=0.0),
    )
    state, expected_state = ours.init(params), reference.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(expected_state)
    for _ in range(3):
        updates, state = jax.jit(ours.update)(grads, state, params)
        expected, expected_state = reference.update(grads, expected_state, params)
        for a, b in zip(
            jax.tree.leaves((updates, state)),
            jax.tree.leaves((expected, expected_state)),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


REFERENCES = {
    "sgd": lambda: optax.sgd(0.03),
    "momentum": lambda: optax.sgd(0.03, momentum=0.9),
    "adam": lambda: optax.adam(0.03),
    "adamw": lambda: optax.adamw(0.03, weight_decay=1e-4),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("grad_scale", [0.01, 100.0])  # under and over the clip norm
def test_every_optimizer_is_optax_behind_the_clip(name, grad_scale):
    """Each registered optimizer with its default fields: the clip by global norm, then
    optax's own optimizer, whatever the gradients' size."""
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.standard_normal((50, 10)), jnp.float32)}
    optim_config = config_schema.default_config().optim
    optim_config.name = name
    fields = optim.OPTIMIZERS.arguments(optim_config)
    ours = optim.make_optimizer(name, 0.03, 5.0, **fields)
    reference = optax.chain(optax.clip_by_global_norm(5.0), REFERENCES[name]())
    state, expected_state = ours.init(params), reference.init(params)
    for _step in range(3):
        grads = {
            "w": jnp.asarray(rng.standard_normal((50, 10)) * grad_scale, jnp.float32)
        }
        updates, state = ours.update(grads, state, params)
        expected, expected_state = reference.update(grads, expected_state, params)
        np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-5, atol=1e-8)
        params = optax.apply_updates(params, updates)


def test_a_field_the_optimizer_does_not_read_is_refused():
    config = config_schema.default_config()
    config.optim.momentum = 0.5  # adagrad has no momentum
    with pytest.raises(
        ConfigError, match="optim.momentum=0.5 is not used by optim 'adagrad'"
    ):
        config_schema.validate(config)
    config.optim.name = "momentum"
    config_schema.validate(config)


def test_unknown_optimizer_names_the_choices():
    config = config_schema.default_config()
    config.optim.name = "lion"
    with pytest.raises(
        ConfigError,
        match="optim.name='lion' is not one of adagrad, sgd, momentum, adam, adamw",
    ):
        config_schema.validate(config)


def test_the_optimizer_is_a_sweep_axis(tmp_path):
    from configs import sweep_mlp

    config = config_schema.with_sweep(
        sweep_mlp.smoke(sweep_mlp.get_config()),
        {"optim.name": ("adagrad", "adam"), "optim.learning_rate": (0.01,)},
    )
    rows = runner.run_sweep(config, tmp_path)
    assert [r["optim.name"] for r in rows] == ["adagrad", "adam"]
    assert rows[0]["val/log_loss"] != rows[1]["val/log_loss"]
    table = (tmp_path / "sweep.csv").read_text().splitlines()
    assert "optim.name" in table[0] and "adam" in table[2]


@pytest.mark.parametrize(
    "accumulator", [0.01, 1.0, optim.TF1_ADAGRAD_INITIAL_ACCUMULATOR]
)
def test_initial_accumulator_bounds_the_first_step(monkeypatch, accumulator):
    """Adagrad without epsilon, from an accumulator `a`: the first step of a weight with
    gradient g is lr * g / sqrt(a + g^2), so never larger than the learning rate, near
    it for |g| >> sqrt(a), and lr * g / sqrt(a) for tiny g; a larger `a` only shrinks
    it. (No clipping here: the clip norm is far above the gradients'.)"""
    monkeypatch.setattr(optim, "TF1_ADAGRAD_INITIAL_ACCUMULATOR", accumulator)
    learning_rate = 0.5
    magnitudes = np.logspace(-4, 2, 7)
    g = jnp.asarray(np.concatenate([magnitudes, -magnitudes]), jnp.float32)
    tx = optim.make_optimizer("adagrad", learning_rate, 1e30)
    updates, _ = tx.update({"w": g}, tx.init({"w": g}))
    step = -np.asarray(updates["w"])
    np.testing.assert_allclose(
        step, learning_rate * g / np.sqrt(accumulator + np.square(g)), rtol=1e-6
    )
    assert np.all(np.abs(step) < learning_rate)
    assert np.all(np.sign(step) == np.sign(g))
    monkeypatch.setattr(optim, "TF1_ADAGRAD_INITIAL_ACCUMULATOR", accumulator * 4)
    larger = optim.make_optimizer("adagrad", learning_rate, 1e30)
    smaller_steps, _ = larger.update({"w": g}, larger.init({"w": g}))
    assert np.all(np.abs(np.asarray(smaller_steps["w"])) < np.abs(step))
