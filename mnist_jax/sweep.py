"""Hyper-parameter sweeps: the whole grid from one command, members trained together.

`python -m mnist_jax.sweep --config=configs/sweep_mlp.py --workdir=W`

A sweep config is an ordinary config plus a `sweep` group naming axes as tuples, e.g.
`config.sweep.optim.learning_rate = (0.01, 0.03, 0.1)` and `config.sweep.seed = (0, 1)`;
the grid is their product. Members that differ only in seed, learning rate and clip norm
share array shapes and run as one compiled program, `jax.vmap` over the same pure
functions a single run uses; other axes (batch size, width, dropout, steps, loss
reduction) split the grid into groups that run one after another. `--axis=NAME=VALUES`
sweeps any field from the command line.

Each member writes a single run's files into `W/members/<index>/` (`sweep_members`),
checkpoints included, so a sweep is locked, stopped by SIGINT/SIGTERM after a chunk,
and continued by the same command after any stop, bitwise.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from mnist_jax import (
    checkpoints,
    config_schema,
    data,
    devices,
    interrupts,
    loop,
    metrics,
    schedule,
    sizing,
    startup,
    steps,
    sweep_members,
    sweep_report,
    train,
    writers,
)
from mnist_jax import mesh as mesh_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError, Interrupted, UserError

# By name: run as `python -m mnist_jax.sweep`, `__name__` is "__main__", whose lines
# would miss the "mnist_jax" logger that writes train.log.
log = logging.getLogger("mnist_jax.sweep")

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


def add_axes(config: ConfigDict, specs: list[str]) -> ConfigDict:
    """A copy of `config` with each `NAME=VALUES` of `specs` (the `--axis` flag) as a
    sweep axis: NAME any config field, VALUES a Python tuple, e.g.
    `model.hidden_units=((50,), (100, 100))`; it replaces an axis of the same name.
    A bad one is a one-line `ConfigError`."""
    swept = dict(config_schema.leaves(config.get("sweep", ConfigDict())))
    for spec in specs:
        name, equals, text = spec.partition("=")
        example = "e.g. --axis=optim.learning_rate='(0.01, 0.1)'"
        if not equals or not name:
            raise ConfigError(f"--axis={spec}: expected NAME=VALUES, {example}")
        problem = config_schema.unknown_field_message(name)
        if problem:
            raise ConfigError(f"--axis={spec}: {problem}")
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values = None
        if not isinstance(values, tuple | list) or not values:
            raise ConfigError(
                f"--axis={spec}: VALUES must be a non-empty tuple, {example}"
            )
        swept[name] = tuple(values)
    plain = {k: v for k, v in config.to_dict().items() if k != "sweep"}
    return config_schema.with_sweep(ConfigDict(plain), swept)


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
    """A group's programs, each `jax.vmap` of a single run's (`loop.ChunkPrograms`),
    members sharded over the mesh's `members` axis: what `run_group` runs and the
    benchmark times."""

    init: Callable  # (seeds, learning rates, clip norms) -> (TrainState, Member)
    # as steps.Program.train_steps, for a block of members (state donated; the trip
    # count is static: one compilation per `schedule.loop_lengths` entry)
    train: Callable
    evaluate: Callable  # as steps.Program.pool_scores: a period's scores
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
    train_steps = vmapped(
        program.train_steps,
        in_axes=(_STATE_AXES, None, None, _MEMBER_AXES, 0),
        out_axes=(_STATE_AXES, 0),
    )
    return GroupPrograms(
        init=startup.jit(
            init,
            run_once=True,
            out_shardings=(
                steps.TrainState(replicated, by_member, by_member),
                by_member,
            ),
        ),
        train=startup.jit(train_steps, static_argnums=1, donate_argnums=0),
        evaluate=startup.jit(
            vmapped(program.pool_scores, in_axes=(0, None, _MEMBER_AXES))
        ),
        test=startup.jit(
            vmapped(program.test_scores, in_axes=(0, None)), run_once=True
        ),
        order=startup.jit(  # once per epoch
            vmapped(program.epoch_order, in_axes=(_MEMBER_AXES, None)), run_once=True
        ),
        program=program,
    )


def member_arrays(configs: list[ConfigDict]) -> tuple[jax.Array, ...]:
    """`GroupPrograms.init`'s arguments for a block of member configs."""
    return (
        jnp.asarray([c.seed for c in configs], jnp.int32),
        jnp.asarray([c.optim.learning_rate for c in configs], jnp.float32),
        jnp.asarray([c.optim.clip_norm for c in configs], jnp.float32),
    )


def save_steps(config: ConfigDict) -> list[int]:
    """Where a member saves: the kept `checkpoint.steps` it reaches, the final step and,
    if set, every `checkpoint.every_steps` (a sweep has no rolling save per period:
    many members' saves would cost more than retraining a period after a crash)."""
    num_steps = config.train.num_steps
    every = config.checkpoint.every_steps
    rolling = range(every, num_steps + 1, every) if every else ()
    kept = (s for s in config.checkpoint.steps if s <= num_steps)
    return sorted({*rolling, *kept, num_steps})


@dataclasses.dataclass
class SweepRun:
    """What every group of a sweep shares."""

    workdir: Path
    host: data.HostData
    dataset: data.Dataset
    device_mesh: Mesh
    source: tuple[str, str]  # `data.resolve`'s answer, for the members' config.json
    run_info: dict  # each member folder's run_info.json
    received: list[int]  # signals caught by `interrupts.deferred`
    hparams: list[dict]  # each member's swept values, by member index
    sweep_id: str  # recorded with every block save and member link: whose they are
    save: bool = True  # member checkpoints (off only to measure what they cost)


def run_group(
    configs: list[ConfigDict],
    indices: list[int],
    run: SweepRun,
    while_compiling: Callable[[], object] | None = None,
) -> list[dict]:
    """Trains same-shaped members together, the member axis sharded over the mesh's
    `members` axis, in blocks that run one after another (padded with copies of the
    last member, whose results are dropped); returns each member's results.

    Each member saves into its folder (`sweep_members`) at `save_steps`; a block whose
    members all finished is read back, one whose members have checkpoints resumes from
    the latest step they share. Saves and files are written on a worker thread while
    the device trains on (on this thread with several processes: `_writer`).

    `while_compiling` runs on this thread while the training program compiles on
    another, time that thread would otherwise spend waiting."""
    config, device_mesh = configs[0], run.device_mesh
    num_real = len(configs)
    blocks, size = block_layout(
        num_real,
        device_mesh.shape[mesh_lib.MEMBERS],
        sizing.members_per_device(config, device_mesh),
    )
    padding = blocks * size - num_real
    configs = configs + [configs[-1]] * padding
    folders = [sweep_members.folder(run.workdir, i) for i in indices]
    folders += [folders[-1]] * padding
    for c, f in zip(configs, folders[:num_real], strict=False):
        sweep_members.check_own(f, checkpoints.recorded_config(c, run.source))
    finished = [sweep_members.finished(f) for f in folders[:num_real]]
    if all(finished):  # nothing to compile
        names = ", ".join(f.name for f in folders[:num_real])
        log.info("Members %s finished earlier: read back.", names)
        return finished
    num_pool, num_train = len(run.host.pool_labels), run.host.num_train
    programs = group_programs(config, num_pool, num_train, device_mesh)
    pool = run.dataset.without_test()  # training programs never see the test set
    state_spec, member_spec = jax.eval_shape(
        programs.init, *member_arrays(configs[:size])
    )
    period_ends = set(
        schedule.period_ends(config.train.num_steps, config.train.num_periods)
    )
    save_at = set(save_steps(config)) if run.save else set()
    chief = mesh_lib.is_chief()
    results: list[dict | None] = [None] * num_real
    tasks: list[Future] = []  # the writer's work: saves and member files

    def run_tasks():  # waits for the writer (and raises what it raised)
        while tasks:
            tasks.pop(0).result()

    # Saves and member files are written in order on one worker thread while this one
    # keeps the device fed: a block's saves can take longer than its next chunk (with
    # several processes, on this thread: `_writer`). The worker stops (finishing its
    # work) before the checkpoints close.
    with (
        startup.Compiler() as compiler,
        contextlib.ExitStack() as stack,
        _writer() as writer,
    ):
        # The training loop, order, evaluation and test programs compile on a second
        # thread while this one initialises the first block: one training loop per
        # trip count (`schedule.loop_lengths`; a resume off the schedule compiles its
        # own), as a single run does.
        epoch = jax.ShapeDtypeStruct((), jnp.int32)
        order_ready = compiler.submit(programs.order, member_spec, epoch)
        order_spec = jax.eval_shape(programs.order, member_spec, epoch)
        train_ready: dict[int, Future] = {}

        def train_program(num_steps: int):
            if num_steps not in train_ready:
                orders = (order_spec,) * programs.program.chunk_epochs(
                    num_steps, member_spec
                )
                train_ready[num_steps] = compiler.submit(
                    programs.train, state_spec, num_steps, pool, member_spec, orders
                )
            return train_ready[num_steps]

        lengths = schedule.loop_lengths(config)
        for length in lengths:
            train_program(length)
        evaluate_ready = compiler.submit(
            programs.evaluate, state_spec.params, pool, member_spec
        )
        test_ready = compiler.submit(programs.test, state_spec.params, run.dataset)
        if while_compiling is not None:
            while_compiling()
        for block in range(blocks):
            if interrupts.agree(run.received):
                run_tasks()
                where = f"after block {block}/{blocks} of a group"
                raise Interrupted(_interrupted(run, where), run.received[0])
            members = range(block * size, (block + 1) * size)
            real = [j for j in members if j < num_real]
            done_rows = [sweep_members.finished(folders[j]) for j in real]
            if all(done_rows):
                for j, row in zip(real, done_rows, strict=True):
                    results[j] = row
                names = ", ".join(folders[j].name for j in real)
                log.info("Members %s finished earlier: read back.", names)
                continue
            block_run = sweep_members.MemberBlock(
                config,
                [configs[j] for j in members],
                [folders[j] for j in members],
                real[-1] - block * size + 1,
                run,
                chief,
                stack,
            )
            state, member = programs.init(*member_arrays(block_run.configs))
            state = block_run.resume(state, state_spec, num_pool, num_train)
            done = block_run.start
            orders = loop.EpochOrders(programs.program, order_ready.result(), member)
            for end in schedule.chunk_ends(config, done):
                state, nonfinite = loop.train_calls(
                    lambda length: train_program(length).result(),
                    state,
                    pool,
                    member,
                    orders,
                    done,
                    end,
                    lengths,
                )
                done = end
                scores = None
                if end in period_ends:
                    scores = evaluate_ready.result()(state.params, pool, member)
                block_run.record(end, scores, nonfinite)
                stop = interrupts.agree(run.received) and end < config.train.num_steps
                if end in save_at or stop:
                    tasks.append(writer.submit(block_run.save_task(end, state)))
                if stop:
                    run_tasks()
                    where = f"at step {end}"
                    raise Interrupted(_interrupted(run, where), run.received[0])
            test = test_ready.result()(state.params, run.dataset)
            finish = block_run.finish_task(test, results, block * size)
            tasks.append(writer.submit(finish))
        run_tasks()
    return results


class _OnThisThread:
    """An executor that runs each task at once, on the calling thread."""

    def submit(self, fn: Callable[[], object]) -> Future:
        future: Future = Future()
        future.set_result(fn())
        return future

    def __enter__(self) -> _OnThisThread:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _writer():
    """Where saves and member files are written: a worker thread, so the device trains
    on meanwhile; with several processes, this thread, since every process must enter
    the collectives (gathers, Orbax's barriers) in one order, which two threads would
    interleave differently on each process."""
    if jax.process_count() > 1:
        return _OnThisThread()
    return ThreadPoolExecutor(max_workers=1)


def _interrupted(run: SweepRun, where: str) -> str:
    name = signal.Signals(run.received[0]).name
    message = (
        f"interrupted by {name} {where}: member checkpoints saved in "
        f"{run.workdir / sweep_members.BLOCKS_DIR}; run the same command to resume"
    )
    # For the log file only: the command line prints it once, as its error.
    log.warning("%s", message, extra={"console": False})
    return message


def run_sweep(
    config: ConfigDict, workdir: str | os.PathLike, *, save: bool = True
) -> list[dict]:
    """Trains every member of the grid into `workdir`: a folder per member
    (`sweep_members`), then the sweep's tables and figures. A workdir holding this
    sweep is resumed: finished groups are read back, others continue from their
    members' checkpoints. `save=False` skips the checkpoints (to measure their cost)."""
    start = time.perf_counter()
    members = expand(config)
    base = members[0][1]
    source = data.resolve(base.data)
    host = data.load(base.data, source)
    device_mesh = mesh_lib.make_sweep_mesh(base.mesh.shape)
    for _, member_config in members:
        mesh_lib.check_batch(device_mesh, member_config.train.batch_size)
    workdir = workdir_lib.prepare(workdir)
    chief = mesh_lib.is_chief()  # process 0 writes; all take part in checkpoints
    with contextlib.ExitStack() as stack:
        stack.enter_context(workdir_lib.lock(workdir))  # every process agrees
        check_workdir(workdir, config)
        checkpoints.check_data(
            workdir,
            host,
            "point --config.data.path at the sweep's data, or use a new --workdir",
        )
        dataset = data.to_device(host, mesh_lib.replicated(device_mesh))
        run_info = {
            "data": host.fingerprint(),
            **workdir_lib.environment(),
            "mesh": mesh_lib.describe(device_mesh),
            "sweep_id": sweep_id(workdir),
        }
        if chief:
            stack.enter_context(workdir_lib.log_file(workdir))
            writers.write_json(workdir / workdir_lib.CONFIG_FILE, config.to_dict())
            writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
        received = stack.enter_context(interrupts.deferred())
        run = SweepRun(
            workdir,
            host,
            dataset,
            device_mesh,
            source,
            run_info,
            received,
            [h for h, _ in members],
            run_info["sweep_id"],
            save,
        )
        rows = train_groups(members, run)

        report = sweep_report.write(
            workdir,
            config,
            list(axes(config)),
            members,
            rows,
            dict(device_mesh.shape),
        )
        run_info |= {
            "num_members": len(members),
            "num_groups": len({group_key(c) for _, c in members}),
            "wall_seconds": time.perf_counter() - start,
        }
        if chief:
            writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
        log_report(report)
    return rows


def sweep_id(workdir: Path) -> str:
    """The sweep's identity, recorded in its run_info.json when it first starts:
    moved or renamed, a sweep keeps it; a new sweep in the same folder name gets
    another. Process 0 reads or makes it and tells the others, so every process has
    the same one, or the same one-line error."""
    answer = ""
    if jax.process_index() == 0:
        try:
            answer = "id:" + _recorded_sweep_id(workdir)
        except UserError as e:
            answer = f"error:{e}"
    kind, _, value = workdir_lib.from_process_zero(answer).partition(":")
    if kind == "error":
        raise UserError(value)
    return value


def _recorded_sweep_id(workdir: Path) -> str:
    path = workdir / workdir_lib.RUN_INFO_FILE
    recorded = writers.read_json(path).get("sweep_id") if path.is_file() else None
    if recorded is None:  # a new sweep, or one from before sweeps had an id
        return uuid.uuid4().hex
    if not (isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{32}", recorded)):
        raise UserError(f"{path}: sweep_id={recorded!r} is not a sweep's id")
    return recorded


def train_groups(members: list[tuple[dict, ConfigDict]], run: SweepRun) -> list[dict]:
    """Each group in turn; one sweep.csv row per member (its hyper-parameters, every
    result key, the step it diverged at if it did, and its history)."""
    groups: dict[str, list[int]] = {}
    for i, (_, member_config) in enumerate(members):
        groups.setdefault(group_key(member_config), []).append(i)
    rows: list[dict] = [{} for _ in members]
    for n, indices in enumerate(groups.values()):
        group_start = time.perf_counter()
        results = run_group(
            [members[i][1] for i in indices],
            indices,
            run,
            # pandas and matplotlib (~1 s) import while the first group compiles.
            while_compiling=sweep_report.import_libraries if n == 0 else None,
        )
        for i, result in zip(indices, results, strict=True):
            rows[i] = {
                "member": i,
                **members[i][0],
                **{k: result[k] for k in RESULT_KEYS},
                "history": result["history"],
            }
            if "diverged_at_step" in result:
                rows[i]["diverged_at_step"] = result["diverged_at_step"]
        log.info(
            "Group %d/%d: %d members in %.1fs.",
            n + 1,
            len(groups),
            len(indices),
            time.perf_counter() - group_start,
        )
        if n + 1 < len(groups) and interrupts.agree(run.received):
            raise Interrupted(
                _interrupted(run, f"after group {n + 1}/{len(groups)}"),
                run.received[0],
            )
    return rows


# A sweep may be resumed on another layout (where it runs, not what it computes); data
# is identified by content (`checkpoints.check_data`), not by where it was read.
RESUMABLE_FIELDS = (*checkpoints.LAYOUT_FIELDS, *checkpoints.DATA_LOCATION_FIELDS)


def identity(saved: dict) -> dict:
    """The flat fields (axes as `sweep.NAME`) that make two sweep configs the same
    sweep; the base is filled onto today's defaults, as a single run's is."""
    base = checkpoints.with_defaults({k: v for k, v in saved.items() if k != "sweep"})
    flat = checkpoints.flat_config(base.to_dict())
    flat |= checkpoints.flat_config(saved.get("sweep") or {}, "sweep.")
    return {k: v for k, v in flat.items() if k not in RESUMABLE_FIELDS}


def check_workdir(workdir: Path, config: ConfigDict) -> None:
    """Refuses, in one line, a folder holding a single run or a sweep of another
    config (naming the differing fields); a folder of this sweep is resumed."""
    path = workdir / workdir_lib.CONFIG_FILE
    single = (workdir / checkpoints.CHECKPOINT_DIR).is_dir()
    saved = writers.read_json(path) if path.is_file() else None
    if single or (saved is not None and "sweep" not in saved):
        raise UserError(
            f"{workdir} holds a single run, not a sweep; use a new --workdir"
        )
    if saved is None:
        return
    old, new = identity(saved), identity(config.to_dict())
    differing = [
        f"{k} ({old.get(k)!r} -> {new.get(k)!r})"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]
    if differing:
        raise UserError(
            f"{workdir} holds a sweep of another config; differing fields: "
            f"{', '.join(differing)}. Use a new --workdir, or the same config to resume"
        )


def log_report(report: sweep_report.Written) -> None:
    """The console's last lines: the settings table, the best setting, the files."""
    log.info("Settings (mean ± std over seeds):\n%s", report.settings_markdown)
    log.info("Best setting: %s", report.best_line)
    log.info("Wrote %s", ", ".join(str(p) for p in report.paths))


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
    config = add_axes(flags.FLAGS.config, flags.FLAGS.axis or [])
    run_sweep(config, flags.FLAGS.workdir)


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
    flags.DEFINE_multi_string(
        "axis",
        [],
        "NAME=VALUES: sweep any config field over a tuple of values, e.g. "
        "--axis=model.hidden_units='((50,), (100, 100))'; repeat for more axes. "
        "Replaces the config's axis of that name.",
    )
    flags.DEFINE_integer(
        "cpu_devices",
        None,
        "JAX devices to split a CPU host into (members shard over them). "
        "Default: one per core, unless XLA_FLAGS sets a device count.",
        lower_bound=1,
    )
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
