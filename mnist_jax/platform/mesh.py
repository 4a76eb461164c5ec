"""One device mesh for every platform: a single run shards each batch's rows along
`data`; a sweep can also shard its members along `members`. No platform branches: the
same code runs on one CPU, eight simulated ones, a GPU box or a TPU pod slice.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mnist_jax.errors import ConfigError

DATA, MEMBERS = "data", "members"


def make_mesh(shape: tuple[int, ...] = ()) -> Mesh:
    """`()`: the default single-run mesh, one device per process along `data` (see
    `default_devices`). `(n,)`: the first n devices along `data`. `(m, n)`: m x n
    devices as (`members`, `data`), for sweeps."""
    devices = jax.devices()
    if not shape:
        return Mesh(np.asarray(default_devices(), dtype=object), (DATA,))
    shape = tuple(shape)
    if len(shape) not in (1, 2) or any(n <= 0 for n in shape):
        raise ConfigError(f"mesh.shape={shape!r} must be (data,) or (members, data)")
    if math.prod(shape) > len(devices):
        raise ConfigError(
            f"mesh.shape={shape!r} needs {math.prod(shape)} devices; "
            f"{len(devices)} are available"
        )
    names = (DATA,) if len(shape) == 1 else (MEMBERS, DATA)
    grid = np.asarray(devices[: math.prod(shape)], dtype=object).reshape(shape)
    return Mesh(grid, names)


def default_devices() -> list:
    """A single run's devices unless `mesh.shape` says otherwise: each process's first.
    Splitting a step's rows over devices adds an all-reduce of the gradients to every
    step; for the notebook's models (a 100x100 MLP, batch 30: microseconds of math) that
    costs more than the rows save (on CPU devices, 2, 3 or 6 of them run slower than
    one), and a batch of 30 does not divide over 4 or 8 devices. So one process runs on one device, whatever the host
    has; a multi-host run needs every process in the mesh, so it spans one device per
    process. Data parallelism within a host is opt-in: `--config.mesh.shape='(n,)'`."""
    first: dict[int, jax.Device] = {}
    for device in jax.devices():
        first.setdefault(device.process_index, device)
    return [first[p] for p in sorted(first)]


def make_sweep_mesh(shape: tuple[int, ...] = ()) -> Mesh:
    """A sweep's mesh is always (`members`, `data`): `()` puts every device on the
    members axis, `(n,)` is data parallelism only, `(m, n)` both."""
    shape = tuple(shape) or (len(jax.devices()), 1)
    return make_mesh(shape if len(shape) == 2 else (1, *shape))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_size(mesh: Mesh) -> int:
    return mesh.shape[DATA]


def check_batch(mesh: Mesh, batch_size: int) -> None:
    if batch_size % data_size(mesh):
        raise ConfigError(
            f"train.batch_size={batch_size} does not divide over the {data_size(mesh)} "
            f"devices of the mesh's data axis; use a multiple of {data_size(mesh)} or "
            "set --config.mesh.shape"
        )


def describe(mesh: Mesh) -> dict:
    return {
        "axes": dict(mesh.shape),
        "devices": [str(d) for d in mesh.devices.flat],
        "process_count": jax.process_count(),
    }


def specs(tree, sharding):
    """Shapes and dtypes of `tree`'s arrays (or specs), placed with `sharding`: what an
    ahead-of-time compilation for those placements needs."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
    )


def to_host(tree):
    """NumPy copies of a tree's arrays on every process: a replicated array is read from
    this process's own replica; a sharded one is gathered from all processes."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.array(x)
        if x.is_fully_replicated:
            return np.array(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(fetch, tree)


def is_chief() -> bool:
    """Only process 0 writes metrics, figures and JSON files."""
    return jax.process_index() == 0
