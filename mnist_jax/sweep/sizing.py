"""How many sweep members a device trains at once (a block): as many as half its memory
holds where the device reports its memory (GPUs, TPUs), else the number that keeps a
CPU's caches warm; `sweep_block.members_per_device` overrides both."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

from mnist_jax.core import programs, steps

# Members per device on a device that does not report its memory (a CPU): their
# params, Adagrad state and gradients (~1 MB each) then stay in the L3 cache (8 beat 16
# in the benchmark: docs/performance.md).
CACHE_MEMBERS_PER_DEVICE = 8
# The share of a device's memory a block may fill: the rest holds the data set, XLA's
# scratch space and the error of the estimate below.
MEMORY_FRACTION = 0.5


def members_per_device(config, device_mesh: Mesh) -> int:
    """`config.sweep_block.members_per_device`, or with 0 (auto) the most that fit in
    the memory of the mesh's first device."""
    chosen = config.sweep_block.members_per_device
    if chosen:
        return chosen
    return fitting(member_bytes(config), memory_limit(device_mesh.devices.flat[0]))


def memory_limit(device: jax.Device) -> int | None:
    """The bytes JAX may allocate on `device`, where it says (a CPU does not)."""
    try:
        stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None
    return (stats or {}).get("bytes_limit")


def fitting(bytes_per_member: int, bytes_limit: int | None) -> int:
    """Members per device for a device with `bytes_limit` bytes (None: unknown)."""
    if not bytes_limit:
        return CACHE_MEMBERS_PER_DEVICE
    return max(1, math.floor(MEMORY_FRACTION * bytes_limit / bytes_per_member))


def member_bytes(config) -> int:
    """An estimate of one member's device memory while it trains: params, optimizer
    state and its train/validation indices (exact, from `jax.eval_shape` of its init),
    gradients and updated params (a copy of the params each), and twice the activations
    of a training batch and of an evaluation block (`steps.EVAL_BLOCK_ROWS` rows), each
    row's activations counted as the sum of the layers' output widths (the last axis
    of every weight matrix or kernel)."""
    num_pool = config.data.num_examples
    program = programs.make_program(config)
    init = programs.make_init(config, num_pool, config.data.num_train, program)
    state, member = jax.eval_shape(init, *programs.init_arguments(config))
    params = _nbytes(state.params)
    held = _nbytes(state.opt_state) + _nbytes(member) + 3 * params
    widths = sum(
        leaf.shape[-1] for leaf in jax.tree.leaves(state.params) if leaf.ndim >= 2
    )
    rows = config.train.batch_size + steps.EVAL_BLOCK_ROWS
    return held + 2 * rows * widths * np.dtype(np.float32).itemsize


def _nbytes(tree) -> int:
    # A PRNG key's dtype has no NumPy itemsize; its two uint32 words are 8 bytes.
    return sum(
        math.prod(leaf.shape) * getattr(leaf.dtype, "itemsize", 8)
        for leaf in jax.tree.leaves(tree)
    )
