"""What a run's compiled programs are built from: the model's graph, the optimizer and
the seed's split (`make_program`, `make_init`), shared by a single run, a sweep's
members (which `jax.vmap` `make_init`'s function) and analysis (`init_run`)."""

from __future__ import annotations

import json
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from mnist_jax import data
from mnist_jax.core import models, optim, steps
from mnist_jax.platform import startup


def abstract_model(config):
    """The model of `config` as shapes only: its graph, without computing a weight."""
    return nnx.eval_shape(lambda: models.make_model(config.model, config.seed))


def make_program(config, device_mesh=None) -> steps.Program:
    """The run's static half: the model's graph, batch size, loss and optimizer."""
    graphdef, _ = nnx.split(abstract_model(config))
    optimizer_fields = optim.OPTIMIZERS.arguments(config.optim)
    return steps.Program(
        graphdef,
        config.train.batch_size,
        config.optim.loss_reduction,
        device_mesh,
        optimizer=config.optim.name,
        optimizer_fields=tuple(sorted(optimizer_fields.items())),
        matmul_precision=config.train.matmul_precision,
    )


def make_init(config, num_pool: int, num_train: int, program: steps.Program):
    """`init(seed, learning_rate, clip_norm) -> (TrainState, Member)`: pure, so a sweep
    can vmap it over its members."""

    def init(seed, learning_rate, clip_norm):
        _, params = nnx.split(models.make_model(config.model, seed))
        train_idx, val_idx = data.split_indices(seed, num_pool, num_train)
        key = jax.random.key(seed)
        member = steps.Member(train_idx, val_idx, key, learning_rate, clip_norm)
        return program.init_state(params), member

    return init


def init_arguments(config) -> tuple[jax.Array, ...]:
    return (
        jnp.int32(config.seed),
        jnp.float32(config.optim.learning_rate),
        jnp.float32(config.optim.clip_norm),
    )


def init_run(
    config, host: data.HostData
) -> tuple[steps.Program, steps.TrainState, steps.Member]:
    """The program, its initial state and the seed's train/validation split (for
    analysis, which rebuilds a run without training it)."""
    program = make_program(config)
    num_pool, num_train = len(host.pool_labels), host.num_train
    # Seed, learning rate and clip are arguments: a sweep's members share one compile.
    key = (
        program,
        json.dumps(config.model.to_dict(), sort_keys=True),
        num_pool,
        num_train,
    )
    if key not in _COMPILED_INITS:
        init = make_init(config, num_pool, num_train, program)
        if len(_COMPILED_INITS) >= 8:
            _COMPILED_INITS.clear()
        _COMPILED_INITS[key] = startup.compile_once(init, *init_arguments(config))
    state, member = _COMPILED_INITS[key](*init_arguments(config))
    return program, state, member


_COMPILED_INITS: dict[tuple, Callable] = {}  # `init_run`'s, by what they depend on
