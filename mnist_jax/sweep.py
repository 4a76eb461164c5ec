"""Hyper-parameter sweeps: the whole grid from one command, members trained together.

`python -m mnist_jax.sweep --config=configs/sweep_mlp.py --workdir=W`

A sweep config is an ordinary config plus a `sweep` group naming axes as tuples, e.g.
`config.sweep.optim.learning_rate = (0.01, 0.03, 0.1)` and `config.sweep.seed = (0, 1)`;
the grid is their product. Members that differ only in seed, learning rate and clip norm
share array shapes and run as one compiled program, `jax.vmap` over the same pure
functions a single run uses; other axes (batch size, width, dropout, steps, loss
reduction) split the grid into groups that run one after another.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from mnist_jax import (
    config_schema,
    data,
    devices,
    loop,
    metrics,
    schedule,
    sizing,
    startup,
    steps,
    sweep_report,
    train,
    writers,
)
from mnist_jax import mesh as mesh_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError

log = logging.getLogger(__name__)

# Per-member values that are arrays inside the compiled program; any other axis
# changes shapes or static structure and so starts a new group.
TRACED_FIELDS = ("seed", "optim.learning_rate", "optim.clip_norm")
RESULT_KEYS = tuple(metrics.keys("val", "test"))
_MEMBER_AXES = steps.Member(0, 0, 0, 0, 0)
_STATE_AXES = steps.TrainState(None, 0, 0)  # the step count is shared by all members


def axes(config: ConfigDict) -> dict[str, tuple]:
    """The swept fields and their values, in the config's order."""
    swept = dict(config_schema.leaves(config.get("sweep", ConfigDict())))
    known = {name for name, _ in config_schema.leaves(config_schema.default_config())}
    for name, values in swept.items():
        if name not in known:
            raise ConfigError(
                f"sweep.{name}: {config_schema.unknown_field_message(name)}"
            )
        if name.startswith("data."):
            raise ConfigError(
                f"sweep.{name}: data fields cannot be swept (one data set per sweep)"
            )
        if not isinstance(values, tuple | list) or not values:
            raise ConfigError(
                f"sweep.{name}={values!r} must be a non-empty tuple of values"
            )
    return {name: tuple(values) for name, values in swept.items()}


def expand(config: ConfigDict) -> list[tuple[dict, ConfigDict]]:
    """(hyper-parameters, validated member config) for every point of the grid."""
    grid = axes(config)
    base = ConfigDict({k: v for k, v in config.to_dict().items() if k != "sweep"})
    members = []
    for values in itertools.product(*grid.values()):
        member = ConfigDict(base.to_dict())
        hparams = dict(zip(grid, values, strict=True))
        for name, value in hparams.items():
            config_schema.set_field(member, name, value)
        config_schema.validate(member)
        members.append((hparams, member))
    return members


def group_key(member: ConfigDict) -> str:
    flat = dict(config_schema.leaves(member))
    return json.dumps(
        {k: v for k, v in flat.items() if k not in TRACED_FIELDS},
        sort_keys=True,
        default=list,
    )


def block_layout(
    num_members: int, num_shards: int, members_per_device: int
) -> tuple[int, int]:
    """(blocks, members per block): blocks of at most `members_per_device` members per
    device (`sizing.members_per_device`), equal in size (one compiled program), a
    multiple of `num_shards`."""
    per_device = math.ceil(num_members / num_shards)
    blocks = math.ceil(per_device / members_per_device)
    return blocks, math.ceil(per_device / blocks) * num_shards


class GroupPrograms(NamedTuple):
    """A group's programs, each `jax.vmap` of a single run's, members sharded over the
    mesh's `members` axis: what `run_group` runs and the benchmark times."""

    init: Callable  # (seeds, learning rates, clip norms) -> (TrainState, Member)
    # as steps.Program.chunk, for a block of members (state donated; the chunk length
    # and evaluate flag are static: one compilation per length)
    chunk: Callable
    test: Callable  # as steps.Program.test_scores
    order: Callable  # as steps.Program.epoch_order, for a block of members
    program: steps.Program  # the single run's, which these vmap


def group_programs(
    config: ConfigDict, num_pool: int, num_train: int, device_mesh: Mesh
) -> GroupPrograms:
    replicated = mesh_lib.replicated(device_mesh)
    by_member = NamedSharding(device_mesh, PartitionSpec(mesh_lib.MEMBERS))
    program = train.make_program(config, device_mesh)
    vmapped = functools.partial(jax.vmap, spmd_axis_name=mesh_lib.MEMBERS)
    init = vmapped(
        train.make_init(config, num_pool, num_train, program),
        out_axes=(_STATE_AXES, _MEMBER_AXES),
    )
    chunk = vmapped(
        program.chunk,
        in_axes=(_STATE_AXES, None, None, None, _MEMBER_AXES, 0),
        out_axes=(_STATE_AXES, 0, 0),
    )
    return GroupPrograms(
        init=jax.jit(
            init,
            out_shardings=(
                steps.TrainState(replicated, by_member, by_member),
                by_member,
            ),
            compiler_options=startup.RUN_ONCE_OPTIONS,
        ),
        chunk=jax.jit(chunk, static_argnums=(1, 2), donate_argnums=0),
        test=jax.jit(
            vmapped(program.test_scores, in_axes=(0, None)),
            compiler_options=startup.RUN_ONCE_OPTIONS,
        ),
        order=jax.jit(vmapped(program.epoch_order, in_axes=(_MEMBER_AXES, None))),
        program=program,
    )


def member_arrays(configs: list[ConfigDict]) -> tuple[jax.Array, ...]:
    """`GroupPrograms.init`'s arguments for a block of member configs."""
    return (
        jnp.asarray([c.seed for c in configs], jnp.int32),
        jnp.asarray([c.optim.learning_rate for c in configs], jnp.float32),
        jnp.asarray([c.optim.clip_norm for c in configs], jnp.float32),
    )


def run_group(
    configs: list[ConfigDict],
    host: data.HostData,
    dataset: data.Dataset,
    device_mesh: Mesh,
    while_compiling: Callable[[], object] | None = None,
) -> list[dict]:
    """Trains same-shaped members together, the member axis sharded over the mesh's
    `members` axis, in blocks that run one after another (padded with copies of the
    last member, whose results are dropped); returns each member's results.

    `while_compiling` runs on this thread while the training program compiles on
    another, time that thread would otherwise spend waiting."""
    config = configs[0]
    num_real = len(configs)
    blocks, size = block_layout(
        num_real,
        device_mesh.shape[mesh_lib.MEMBERS],
        sizing.members_per_device(config, device_mesh),
    )
    configs = configs + [configs[-1]] * (blocks * size - num_real)
    programs = group_programs(
        config, len(host.pool_labels), host.num_train, device_mesh
    )
    pool = dataset.without_test()  # training programs never see the test set
    state_spec, member_spec = jax.eval_shape(
        programs.init, *member_arrays(configs[:size])
    )
    period_ends = schedule.period_ends(config.train.num_steps, config.train.num_periods)
    lengths = dict.fromkeys(
        b - a for a, b in zip([0, *period_ends[:-1]], period_ends, strict=True)
    )
    pending = []  # per block: (each period's scores, test scores), still on device
    with startup.Compiler() as compiler:
        # The training and test programs compile on a second thread while this one
        # initialises the first block.
        epoch = jax.ShapeDtypeStruct((), jnp.int32)
        order_ready = compiler.submit(programs.order, member_spec, epoch)
        order_spec = jax.eval_shape(programs.order, member_spec, epoch)
        chunk_ready = {
            n: compiler.submit(
                programs.chunk,
                state_spec,
                n,
                True,
                pool,
                member_spec,
                (order_spec,) * programs.program.chunk_epochs(n, member_spec),
            )
            for n in lengths
        }
        test_ready = compiler.submit(programs.test, state_spec.params, dataset)
        if while_compiling is not None:
            while_compiling()
        # Every block's work is dispatched without waiting for results: the device
        # runs chunk after chunk, block after block, and the host reads all at the end.
        for block in range(blocks):
            state, member = programs.init(
                *member_arrays(configs[block * size : (block + 1) * size])
            )
            periods, done = [], 0
            orders = loop.EpochOrders(programs.program, order_ready.result(), member)
            for end in period_ends:
                # A diverging member is not stopped: its numbers come out NaN.
                state, scores, _ = chunk_ready[end - done].result()(
                    state, pool, member, orders(done, end - done)
                )
                periods.append(scores)
                done = end
            pending.append((periods, test_ready.result()(state.params, dataset)))
    results = []
    for periods, test in mesh_lib.to_host(pending):
        for i in range(size):
            history = [
                {"step": end, **{k: float(v[i]) for k, v in scores.items()}}
                for end, scores in zip(period_ends, periods, strict=True)
            ]
            results.append(
                {
                    **{k: history[-1][k] for k in metrics.keys("val")},
                    **{k: float(v[i]) for k, v in test.items()},
                    "history": history,
                }
            )
    return results[:num_real]


def run_sweep(config: ConfigDict, workdir: str | os.PathLike) -> list[dict]:
    """Trains every member of the grid into one workdir's tables and figures."""
    start = time.perf_counter()
    members = expand(config)
    base = members[0][1]
    host = data.load(base.data)
    workdir = workdir_lib.prepare(workdir)
    writers.write_json(workdir / workdir_lib.CONFIG_FILE, config.to_dict())
    device_mesh = mesh_lib.make_sweep_mesh(base.mesh.shape)
    for _, member_config in members:
        mesh_lib.check_batch(device_mesh, member_config.train.batch_size)
    dataset = data.to_device(host, mesh_lib.replicated(device_mesh))

    groups: dict[str, list[int]] = {}
    for i, (_, member_config) in enumerate(members):
        groups.setdefault(group_key(member_config), []).append(i)
    rows: list[dict] = [{} for _ in members]
    for n, indices in enumerate(groups.values()):
        group_start = time.perf_counter()
        results = run_group(
            [members[i][1] for i in indices],
            host,
            dataset,
            device_mesh,
            # pandas and matplotlib (~1 s) import while the first group compiles.
            while_compiling=sweep_report.import_libraries if n == 0 else None,
        )
        for i, result in zip(indices, results, strict=True):
            rows[i] = {"member": i, **members[i][0], **result}
        log.info(
            "Group %d/%d: %d members in %.1fs.",
            n + 1,
            len(groups),
            len(indices),
            time.perf_counter() - group_start,
        )

    sweep_report.write(workdir, config, list(axes(config)), members, rows)
    run_info = {
        "data": host.fingerprint(),
        **workdir_lib.environment(),
        "mesh": mesh_lib.describe(device_mesh),
        "num_members": len(members),
        "num_groups": len(groups),
        "wall_seconds": time.perf_counter() - start,
    }
    writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
    return rows


def use_cpu_cores(num_devices: int | None = None) -> None:
    """Splits the CPU backend into `num_devices` JAX devices (default: one per core the
    process may use) before JAX starts. One CPU device runs a program's small ops on
    one core; a sweep's members shard over devices, so this puts every core to work.
    Leaves an `XLA_FLAGS` device count alone; does nothing to a GPU or TPU backend."""
    if num_devices is None:
        if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
            return
        num_devices = len(os.sched_getaffinity(0))
    jax.config.update("jax_num_cpu_devices", num_devices)


def main(argv) -> None:
    del argv
    from absl import flags

    use_cpu_cores(flags.FLAGS.cpu_devices)
    devices.log_startup()
    run_sweep(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from mnist_jax import cli

    config_flags.DEFINE_config_file(
        "config",
        None,
        "Sweep config file, e.g. configs/sweep_mlp.py or configs/sweep_mlp.py:smoke.",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Where the sweep writes its files.")
    flags.DEFINE_integer(
        "cpu_devices",
        None,
        "JAX devices to split a CPU host into (members shard over them). "
        "Default: one per core, unless XLA_FLAGS sets a device count.",
        lower_bound=1,
    )
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
