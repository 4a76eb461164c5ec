"""A sweep block holds as many members as the device's memory allows; a CPU keeps the
cache-sized blocks that are fastest there."""

import math

import jax
import pytest

from configs import mlp
from mnist_jax import data
from mnist_jax.config import schema as config_schema
from mnist_jax.errors import ConfigError
from mnist_jax.platform import mesh
from mnist_jax.run import schedule
from mnist_jax.sweep import groups, sizing

H200_BYTES = 141 * 10**9


def test_1024_mlp_members_form_one_block_on_a_141_gb_device():
    per_device = sizing.fitting(sizing.member_bytes(mlp.get_config()), H200_BYTES)
    assert per_device >= 1024
    assert groups.block_layout(1024, 1, per_device) == (1, 1024)


def test_member_bytes_counts_state_and_activations():
    config = mlp.get_config()
    # 89,610 params: params, gradients, updated params and Adagrad's accumulator.
    assert sizing.member_bytes(config) > 4 * 89_610 * 4
    wider = mlp.get_config()
    wider.model.hidden_units = (1000, 1000)
    assert sizing.member_bytes(wider) > 10 * sizing.member_bytes(config)


def test_a_device_without_memory_figures_keeps_cache_sized_blocks():
    device_mesh = mesh.make_sweep_mesh(())
    assert sizing.memory_limit(jax.devices()[0]) is None  # the suite runs on CPU
    assert sizing.members_per_device(mlp.get_config(), device_mesh) == 8
    assert sizing.fitting(10**6, None) == sizing.CACHE_MEMBERS_PER_DEVICE == 8


def test_small_memory_still_fits_one_member():
    assert sizing.fitting(10**9, 10**6) == 1


def test_config_overrides_the_block_size():
    config = mlp.get_config()
    config.sweep_block.members_per_device = 3
    assert sizing.members_per_device(config, mesh.make_sweep_mesh(())) == 3
    config.sweep_block.members_per_device = -1
    with pytest.raises(ConfigError, match="members_per_device=-1"):
        config_schema.validate(config)


def test_the_estimate_bounds_what_a_compiled_block_holds():
    """`member_bytes` is what "as many as fit in half a device's memory" rests on: for a
    block of members, the compiled training loop's and evaluation's own memory
    figures (arguments, outputs and scratch, XLA's `memory_analysis`, less the data
    set every member shares) stay within the block's estimate."""
    config = mlp.get_config()
    num_pool, num_train = config.data.num_examples, config.data.num_train
    device_mesh = mesh.make_sweep_mesh(())
    size = 8
    programs = groups.group_programs(config, num_pool, num_train, device_mesh)
    state, member = jax.eval_shape(
        programs.init, *groups.member_arrays([config] * size)
    )
    pool = mesh.specs(data.pool_spec(num_pool), mesh.replicated(device_mesh))
    order = jax.eval_shape(programs.order, member, jax.ShapeDtypeStruct((), "int32"))
    length = schedule.loop_lengths(config)[0]
    orders = (order,) * programs.program.chunk_epochs(length, member)
    shared = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(pool))
    estimate = size * sizing.member_bytes(config)
    for compiled in (
        programs.train.lower(state, length, pool, member, orders).compile(),
        programs.evaluate.lower(state.params, pool, member).compile(),
    ):
        used = compiled.memory_analysis()
        held = (
            used.argument_size_in_bytes
            + used.output_size_in_bytes
            - used.alias_size_in_bytes
            + used.temp_size_in_bytes
            - shared
        )
        assert 0 < held <= estimate, (held, estimate)
