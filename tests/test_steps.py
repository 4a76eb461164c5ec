import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mlp
from mnist_jax import data
from mnist_jax.config import schema as config_schema
from mnist_jax.core import programs, steps
from mnist_jax.errors import ConfigError
from mnist_jax.run import loop, schedule, train


@pytest.fixture(scope="module")
def run():
    config = mlp.get_config("smoke")
    config.model.dropout_rate = 0.3  # per-step randomness too
    host = data.load(config.data)
    program, state, member = programs.init_run(config, host)
    return program, state, member, data.to_device(host)


def _reference_rows(program, member, first_step: int, num_steps: int) -> np.ndarray:
    """The rows each step trains on, one step at a time as the notebook's input
    function would: epoch `step // steps_per_epoch` in its `epoch_order`."""
    per_epoch = program.steps_per_epoch(member)
    order = jax.jit(program.epoch_order)
    rows = []
    for step in range(first_step, first_step + num_steps):
        epoch, position = divmod(step, per_epoch)
        start = position * program.batch_size
        rows.append(
            member.train_idx[order(member, epoch)[start:][: program.batch_size]]
        )
    return np.asarray(rows)


def _orders(program, member, done, num_steps):
    """The epochs' row orders for steps `done` onwards, drawn as a run draws them."""
    return loop.orders_for(program, member, done, num_steps)


@pytest.mark.parametrize(("first_step", "num_steps"), [(0, 7), (20, 9), (24, 53)])
def test_batch_rows_follow_each_epochs_order(run, first_step, num_steps):
    program, state, member, _ = run
    assert program.steps_per_epoch(member) == 25  # 750 rows, batches of 30
    step = state.step + first_step
    orders = jnp.asarray(_orders(program, member, first_step, num_steps))
    rows = jax.jit(lambda step: program.batch_rows(step, num_steps, orders, member))(
        step
    )
    np.testing.assert_array_equal(
        rows, _reference_rows(program, member, first_step, num_steps)
    )


def test_training_loop_has_a_known_trip_count_and_no_conditional(run):
    """On XLA:GPU a while loop of unknown trip count, or a conditional, copies its
    predicate to the host and waits for the device every iteration."""
    program, state, member, dataset = run
    orders = loop.EpochOrders(program, jax.jit(program.epoch_order), member)(0, 7)
    for args in ((orders,),):
        hlo = (
            jax.jit(program.train_steps, static_argnums=1)
            .lower(state, 7, dataset, member, *args)
            .compile()
            .as_text()
        )
        loops = [line for line in hlo.splitlines() if " while(" in line]
        trip_counts = [
            re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line) for line in loops
        ]
        assert all(trip_counts), "a while loop of unknown trip count"
        # The training loop's carry holds the first layer's weights.
        (training,) = [
            count.group(1)
            for line, count in zip(loops, trip_counts, strict=True)
            if "f32[784,100]" in line.split(" while(")[0]
        ]
        assert training == "7"
        assert "conditional(" not in hlo


def test_one_compilation_per_chunk_length(run):
    program, state, member, dataset = run
    train_steps = jax.jit(program.train_steps, static_argnums=1, donate_argnums=0)
    state = jax.tree.map(lambda x: x.copy(), state)  # donated below
    done = 0
    for length in (3, 7, 3, 3, 7):
        orders = _orders(program, member, done, length)
        state, _ = train_steps(state, length, dataset, member, orders)
        done += length
    assert int(state.step) == 23
    assert train_steps._cache_size() == 2


def test_chunks_with_drawn_orders_train_as_one_loop(run):
    """The run's way (each epoch's order drawn once, by its own program) and any
    chunking give the very same parameters as one long loop."""
    program, state, member, dataset = run
    train_steps = jax.jit(program.train_steps, static_argnums=1)
    whole_orders = _orders(program, member, 0, 60)  # over 2 epochs of 25 steps
    whole, _ = train_steps(state, 60, dataset, member, whole_orders)
    calls = []

    def order(member, epoch):
        calls.append(int(epoch))
        return jax.jit(program.epoch_order)(member, epoch)

    orders = loop.EpochOrders(program, order, member)
    chunked, done = state, 0
    for length in (7, 18, 1, 25, 9):
        chunked, _ = train_steps(chunked, length, dataset, member, orders(done, length))
        done += length
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_array_equal(a, b)
    assert calls == [0, 1, 2]  # each epoch's order drawn once


def test_run_chunk_lengths_come_from_the_schedule():
    config = mlp.get_config()
    assert schedule.chunk_ends(config) == [10, *range(100, 1001, 100)]
    assert schedule.chunk_lengths(config) == [10, 90, 100]
    assert schedule.chunk_lengths(config, done=300) == [100]
    assert schedule.chunk_lengths(mlp.get_config("smoke")) == [5, 10]


def test_a_run_compiles_few_training_loops():
    config = mlp.get_config()
    assert schedule.loop_lengths(config) == [10]  # chunks of 10, 90, 100: one loop
    assert schedule.calls(90, [10]) == [10] * 9
    assert schedule.calls(7, [10]) == [7]  # off the schedule: its own loop
    config.train.num_periods = 7  # ends 10, 100, 143, 286, ...: gcd 1
    assert schedule.loop_lengths(config) == [10, 90, 43, 143, 142]
    assert schedule.calls(143, schedule.loop_lengths(config)) == [143]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("float32", "HIGHEST"), ("tensorfloat32", "HIGH"), ("default", "DEFAULT")],
)
def test_matmul_precision_reaches_every_dot(run, name, expected):
    program, state, member, dataset = run
    program = steps.Program(**{**vars(program), "matmul_precision": name})
    for lowered in (
        jax.jit(program.train_steps, static_argnums=1).lower(
            state, 3, dataset, member, _orders(program, member, 0, 3)
        ),
        jax.jit(program.pool_scores).lower(state.params, dataset, member),
        jax.jit(program.final_evaluation).lower(state.params, dataset, member),
    ):
        float_dots = [
            line
            for line in lowered.as_text().splitlines()
            if "dot_general" in line and "xf32>" in line  # not the confusion counts
        ]
        precisions = {re.search(r"precision = \[(\w+),", d)[1] for d in float_dots}
        assert float_dots and precisions == {expected}


def test_matmul_precision_is_validated_and_recorded(tmp_path):
    config = mlp.get_config("smoke")
    config.train.matmul_precision = "fp8"
    with pytest.raises(ConfigError) as error:
        config_schema.validate(config)
    assert str(error.value) == (
        "train.matmul_precision='fp8' is not one of float32, tensorfloat32, "
        "bfloat16, default"
    )
    config = mlp.get_config("smoke")
    config.train.num_steps, config.train.num_periods = 5, 1
    train.train_and_evaluate(config, tmp_path)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["matmul_precision"] == "float32"
