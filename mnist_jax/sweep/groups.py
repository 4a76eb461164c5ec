"""A group of a sweep: members of the same shapes trained together as one compiled
program, `jax.vmap` of a single run's pure functions with the member axis sharded over
the mesh, in blocks of members that run one after another."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from mnist_jax import data
from mnist_jax.core import programs as programs_lib
from mnist_jax.core import steps
from mnist_jax.errors import Interrupted
from mnist_jax.platform import mesh as mesh_lib
from mnist_jax.platform import startup
from mnist_jax.run import checkpoints, identity, interrupts, loop, schedule
from mnist_jax.sweep import members as sweep_members
from mnist_jax.sweep import sizing

log = logging.getLogger(__name__)

_MEMBER_AXES = steps.Member(0, 0, 0, 0, 0)
_STATE_AXES = steps.TrainState(None, 0, 0)  # the step count is shared by all members


def block_layout(
    num_members: int, num_shards: int, members_per_device: int
) -> tuple[int, int]:
    """(blocks, members per block): blocks of at most `members_per_device` members per
    device (`sizing.members_per_device`), equal in size (one compiled program), a
    multiple of `num_shards`."""
    per_device = math.ceil(num_members / num_shards)
    blocks = math.ceil(per_device / members_per_device)
    return blocks, math.ceil(per_device / blocks) * num_shards


def padded(
    configs: list[ConfigDict], device_mesh: Mesh
) -> tuple[list[ConfigDict], int, int]:
    """(`configs` padded with copies of the last member to fill the blocks, blocks,
    members per block): the layout `run_group` trains a group in (`block_layout`)."""
    blocks, size = block_layout(
        len(configs),
        device_mesh.shape[mesh_lib.MEMBERS],
        sizing.members_per_device(configs[0], device_mesh),
    )
    return configs + [configs[-1]] * (blocks * size - len(configs)), blocks, size


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
    program = programs_lib.make_program(config, device_mesh)
    vmapped = functools.partial(jax.vmap, spmd_axis_name=mesh_lib.MEMBERS)
    init = vmapped(
        programs_lib.make_init(config, num_pool, num_train, program),
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


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class CompiledGroup:
    """A group's programs, compiling on a second thread while the first block starts."""

    programs: GroupPrograms
    loops: loop.CompiledLoops  # the training loop, one per trip count
    order: Future  # each epoch's row orders
    evaluate: Future  # a period's scores
    test: Future  # the test set's scores
    state_spec: steps.TrainState
    pool: data.Dataset  # training programs never see the test set


def run_group(
    configs: list[ConfigDict],
    indices: list[int],
    run: SweepRun,
    while_compiling: Callable[[], object] | None = None,
) -> list[dict]:
    """Trains same-shaped members together, the member axis sharded over the mesh's
    `members` axis, in blocks that run one after another (padded with copies of the
    last member, whose results are dropped); returns each member's results.

    Each member saves into its folder (`sweep_members`) at `schedule.save_steps`; a
    block whose members all finished is read back, one whose members have checkpoints
    resumes from the latest step they share. Saves and files are written on a worker
    thread while the device trains on (on this thread with several processes:
    `_writer`), which stops, finishing its work, before the checkpoints close.

    `while_compiling` runs on this thread while the training program compiles on
    another, time that thread would otherwise spend waiting."""
    config, num_real = configs[0], len(configs)
    configs, blocks, size = padded(configs, run.device_mesh)
    folders = [sweep_members.folder(run.workdir, i) for i in indices]
    folders += [folders[-1]] * (len(configs) - num_real)
    for c, f in zip(configs[:num_real], folders[:num_real], strict=True):
        sweep_members.check_own(f, identity.recorded_config(c, run.source))
    results = [sweep_members.finished(f) for f in folders[:num_real]]
    if all(results):  # nothing to compile
        _log_read_back(folders[:num_real])
        return results
    tasks: list[Future] = []  # the writer's work: saves and member files
    with (
        startup.Compiler() as compiler,
        contextlib.ExitStack() as stack,
        _writer() as writer,
    ):
        group = _compile(config, configs[:size], run, compiler)
        if while_compiling is not None:
            while_compiling()
        for block in range(blocks):
            if interrupts.agree(run.received):
                _wait(tasks)
                raise interrupted(run, f"after block {block}/{blocks} of a group")
            members = range(block * size, (block + 1) * size)
            real = [j for j in members if j < num_real]
            if all(results[j] for j in real):
                _log_read_back([folders[j] for j in real])
                continue
            checkpointer = None
            if run.save:
                block_dir = sweep_members.block_folder(
                    run.workdir, [folders[j] for j in real], size
                )
                checkpointer = stack.enter_context(
                    checkpoints.Checkpointer(block_dir, config.checkpoint.steps)
                )
            block_run = sweep_members.MemberBlock(
                [configs[j] for j in members],
                [folders[j] for j in members],
                len(real),
                run,
                checkpointer,
            )
            test = _train_block(block_run, group, run, writer, tasks)
            tasks.append(
                writer.submit(block_run.finish_task(test, results, members[0]))
            )
        _wait(tasks)
    return results


def _compile(
    config: ConfigDict, block: list[ConfigDict], run: SweepRun, compiler
) -> CompiledGroup:
    """Submits the group's training loops (one per trip count, `schedule.loop_lengths`,
    as a single run), order, evaluation and test programs to `compiler`."""
    num_pool, num_train = len(run.host.pool_labels), run.host.num_train
    programs = group_programs(config, num_pool, num_train, run.device_mesh)
    pool = run.dataset.without_test()
    state_spec, member_spec = jax.eval_shape(programs.init, *member_arrays(block))
    epoch = jax.ShapeDtypeStruct((), jnp.int32)
    loops = loop.CompiledLoops(
        compiler=compiler,
        train=programs.train,
        program=programs.program,
        state=state_spec,
        pool=pool,
        member=member_spec,
        order=jax.eval_shape(programs.order, member_spec, epoch),
    )
    order = compiler.submit(programs.order, member_spec, epoch)
    for length in schedule.loop_lengths(config):
        loops.submit(length)
    return CompiledGroup(
        programs=programs,
        loops=loops,
        order=order,
        evaluate=compiler.submit(
            programs.evaluate, state_spec.params, pool, member_spec
        ),
        test=compiler.submit(programs.test, state_spec.params, run.dataset),
        state_spec=state_spec,
        pool=pool,
    )


def _train_block(
    block_run: sweep_members.MemberBlock,
    group: CompiledGroup,
    run: SweepRun,
    writer,
    tasks: list[Future],
):
    """Trains one block from its members' latest common checkpoint to the end,
    queueing its saves on `writer`; returns its test scores (on the device)."""
    config = block_run.config
    num_pool, num_train = len(run.host.pool_labels), run.host.num_train
    state, member = group.programs.init(*member_arrays(block_run.configs))
    state = block_run.resume(state, group.state_spec, num_pool, num_train)
    trainer = loop.Trainer(
        train=group.loops,
        pool=group.pool,
        member=member,
        orders=loop.EpochOrders(group.programs.program, group.order.result(), member),
        lengths=schedule.loop_lengths(config),
    )
    period_ends = set(
        schedule.period_ends(config.train.num_steps, config.train.num_periods)
    )
    save_at = set(schedule.save_steps(config, each_period=False)) if run.save else ()
    done = block_run.start
    for end in schedule.chunk_ends(config, done):
        state, nonfinite = trainer.run(state, done, end)
        done = end
        scores = None
        if end in period_ends:
            scores = group.evaluate.result()(state.params, group.pool, member)
        block_run.record(end, scores, nonfinite)
        stop = interrupts.agree(run.received) and end < config.train.num_steps
        if end in save_at or stop:
            tasks.append(writer.submit(block_run.save_task(end, state)))
        if stop:
            _wait(tasks)
            raise interrupted(run, f"at step {end}")
    return group.test.result()(state.params, run.dataset)


def _wait(tasks: list[Future]) -> None:
    """Waits for the writer's tasks in order (raising what one raised)."""
    while tasks:
        tasks.pop(0).result()


def _log_read_back(folders: list[Path]) -> None:
    names = ", ".join(f.name for f in folders)
    log.info("Members %s finished earlier: read back.", names)


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


def interrupted(run: SweepRun, where: str) -> Interrupted:
    saved = f"member checkpoints saved in {run.workdir / sweep_members.BLOCKS_DIR}"
    return interrupts.stopped(run.received, where, saved)
