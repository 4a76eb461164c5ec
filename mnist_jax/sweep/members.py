"""A sweep member's folder, `SWEEP/members/<index>/`, holds a single run's files
(config.json, run_info.json, metrics.jsonl, TensorBoard events, results.json and Orbax
checkpoints), so every reader of a run reads a member unchanged, and a member folder
resumes as a single run. results.json is written last: it marks a member finished.
`MemberBlock` keeps a block of members' folders while the block trains.

A block of members saves one Orbax checkpoint per step, with a leading members axis,
in `SWEEP/blocks/m<first member>-n<members>-s<slots>/`; each member's folder links to it
(`checkpoints.link`), and `checkpoints.Checkpointer` reads the member's slice as the
folder's own checkpoints: one save per block, not per member, whose saves would cost a
large share of a sweep (docs/performance.md)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from mnist_jax.core import metrics, programs, steps
from mnist_jax.errors import UserError
from mnist_jax.platform import mesh as mesh_lib
from mnist_jax.run import checkpoints, identity, loop, train, writers
from mnist_jax.run import workdir as workdir_lib

log = logging.getLogger(__name__)

MEMBERS_DIR = "members"
BLOCKS_DIR = "blocks"


def folder(workdir: str | os.PathLike, index: int) -> Path:
    """`SWEEP/members/<index>/`: member `index` of the grid (sweep.csv's `member`)."""
    return Path(workdir) / MEMBERS_DIR / str(index)


def block_folder(
    workdir: str | os.PathLike, member_dirs: Sequence[Path], slots: int
) -> Path:
    """`SWEEP/blocks/m<first>-n<count>-s<slots>/`: the checkpoints of a block of
    members. A block is a run of consecutive members of a group, padded to `slots`
    (copies of its last member) to divide over the devices, so these three numbers
    say what it holds: a resume on another layout, which forms other blocks or pads
    them otherwise, saves into other folders and never reshapes one."""
    name = f"m{member_dirs[0].name}-n{len(member_dirs)}-s{slots}"
    return Path(workdir) / BLOCKS_DIR / name


def write_start(member_dir: Path, recorded_config: dict, run_info: dict) -> None:
    """config.json and run_info.json, before the member's first checkpoint."""
    member_dir.mkdir(parents=True, exist_ok=True)
    writers.write_json(member_dir / workdir_lib.CONFIG_FILE, recorded_config)
    writers.write_json(member_dir / workdir_lib.RUN_INFO_FILE, run_info)


def check_own(member_dir: Path, recorded_config: dict) -> None:
    """Refuses, in one line, a member folder changed outside the sweep: its config.json
    says another config than the sweep's member `recorded_config`, e.g. it was
    extended as a single run (which rewrites it). Its numbers would otherwise be mixed
    into sweep.csv among the other members'."""
    path = member_dir / workdir_lib.CONFIG_FILE
    if not path.is_file():
        return
    differing = identity.differing_fields(
        writers.read_json(path),
        recorded_config,
        ignored=identity.LAYOUT_FIELDS,
        where=path,
    )
    if differing:
        raise UserError(
            f"{member_dir} was changed outside the sweep: {', '.join(differing)}. "
            "Move it out of the sweep (it is a single run) to train the member again, "
            "or use a new --workdir"
        )


def finished(member_dir: Path) -> dict | None:
    """A finished member's result row (its results.json and history), else None."""
    path = member_dir / workdir_lib.RESULTS_FILE
    if not path.is_file():
        return None
    results = writers.read_results(path)
    return {**results, "history": writers.read_metrics(member_dir)}


def write_finish(
    member_dir: Path, hparams: dict, results: dict, history: list[dict]
) -> None:
    """metrics.jsonl, TensorBoard events (scalars per period, hparams) and, last,
    results.json."""
    writers.rewrite_metrics(member_dir, history)
    for old in member_dir.glob("events.out.tfevents.*"):  # a rerun after a kill
        old.unlink()
    keys = metrics.keys("val", "test")
    writers.write_events(
        member_dir,
        history,
        hparams,
        {f"hparam/{k}": results[k] for k in keys},
    )
    writers.write_json(member_dir / workdir_lib.RESULTS_FILE, results)


def resume_step(member_dirs: Sequence[Path]) -> int | None:
    """The latest step at which every one of `member_dirs` has a checkpoint, or None."""
    common = None
    for member_dir in member_dirs:
        saved = set(checkpoints.available_steps(member_dir))
        common = saved if common is None else common & saved
    return max(common) if common else None


def restore(
    member_dirs: Sequence[Path], step: int, abstract: steps.TrainState
) -> tuple[steps.TrainState, list[dict]]:
    """The members' states at `step`, stacked on a leading axis (on the host), and each
    member's checkpoint metadata."""
    states, metadatas = [], []
    reads = checkpoints.BlockReads()  # members of one block read it once
    for member_dir in member_dirs:
        with checkpoints.Checkpointer(
            member_dir, read_only=True, block_reads=reads
        ) as checkpointer:
            params, opt_state, meta = checkpointer.restore(step, abstract)
        states.append((params, opt_state))
        metadatas.append(meta)
    params, opt_state = jax.tree.map(
        lambda *xs: np.stack([np.asarray(x) for x in xs]), *states
    )
    return steps.TrainState(np.int32(step), params, opt_state), metadatas


# One compiled copy of a whole state: eager copies, leaf by leaf, are slow.
# Plain `jax.jit`: a copy adds nothing up, and `startup.jit` would start JAX's backend
# at import, before `sweep.use_cpu_cores` splits the CPU.
_copied = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


class MemberBlock:
    """A block of a sweep group (members trained together) on the host side: its
    members' histories, checkpoints, divergence and folders. `run` is the sweep's
    `groups.SweepRun`; the first `num_real` of `folders` are real members, the rest
    padding."""

    def __init__(self, configs, folders, num_real, run, checkpointer=None):
        self.config, self.configs, self.folders = configs[0], configs, folders
        self.num_real, self.run = num_real, run
        self.chief = mesh_lib.is_chief()  # process 0 writes; all take part in saves
        self.checkpointer = checkpointer  # the block's (`block_folder`), None: no saves
        self.histories = [[] for _ in configs]
        self.periods: list = []  # (step, scores on device) not yet in `histories`
        self.nonfinite = np.full(len(configs), -1)  # first non-finite step, 0-based
        self.pending_nonfinite: list = []
        self.start, self.seconds_before = 0, 0.0
        self.clock = time.perf_counter()

    def resume(self, state, state_spec, num_pool: int, num_train: int):
        """The members' latest common checkpoint, or `state` (and their first files)."""
        real = self.folders[: self.num_real]
        for f in real:
            missing = checkpoints.missing_blocks(f)
            if missing:
                log.warning(
                    "Member %s's checkpoints in %s are gone: it trains again from its "
                    "latest checkpoint still there, or from the start.",
                    f.name,
                    ", ".join(missing),
                )
        step = resume_step(real)
        if step is None and self.chief:
            for c, f in zip(self.configs, real, strict=False):
                recorded = identity.recorded_config(c, self.run.source)
                write_start(f, recorded, self.run.run_info)
        if self.chief and self.checkpointer:  # before the block's first save
            for i, f in enumerate(real):
                checkpoints.link(
                    f,
                    self.checkpointer.workdir,
                    i,
                    len(self.folders),
                    member=f.name,
                    sweep_id=self.run.sweep_id,
                )
        if step is None:
            return state
        program = programs.make_program(self.config)
        init = programs.make_init(self.config, num_pool, num_train, program)
        device = jax.local_devices()[0]
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=SingleDeviceSharding(device)
            ),
            jax.eval_shape(init, *programs.init_arguments(self.config))[0],
        )
        restored, metadatas = restore(self.folders, step, abstract)
        self.start = step
        self.histories = [m["history"] for m in metadatas]
        self.nonfinite = np.asarray([m.get("nonfinite_step", -1) for m in metadatas])
        self.seconds_before = metadatas[0]["train_seconds"]
        log.info(
            "Resuming %d members from their checkpoints at step %d.",
            self.num_real,
            step,
        )
        return jax.device_put(restored, jax.tree.map(lambda s: s.sharding, state_spec))

    def record(self, end: int, scores, nonfinite: list) -> None:
        """A chunk ending at `end`: its scores (None off a period end) and each of its
        training calls' first non-finite steps, all still on the device."""
        if scores is not None:
            self.periods.append((end, scores))
        self.pending_nonfinite.extend(nonfinite)

    def _taken(self) -> Callable[[], None]:
        """Takes the periods recorded so far (on this thread); the returned function
        moves them into the histories (on the writer's, waiting for their chunks)."""
        periods, pending = self.periods, self.pending_nonfinite
        self.periods, self.pending_nonfinite = [], []
        return lambda: self._to_host(periods, pending)

    def _to_host(self, periods: list, pending: list) -> None:
        period_scores, pending = mesh_lib.to_host(([s for _, s in periods], pending))
        for nonfinite in pending:
            first = (self.nonfinite < 0) & (nonfinite >= 0)
            self.nonfinite = np.where(first, nonfinite, self.nonfinite)
        ends = [end for end, _ in periods]
        for end, scores in zip(ends, period_scores, strict=True):
            for i, history in enumerate(self.histories):
                history.append(
                    {"step": end, **{k: float(v[i]) for k, v in scores.items()}}
                )

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.clock

    def save_task(self, step: int, state) -> Callable[[], None]:
        # A copy on the device: the state itself is donated to the next chunk.
        copy = _copied(state)
        to_host = self._taken()

        def save():
            to_host()
            seconds = self.seconds()
            metadatas = []
            for i in range(self.num_real):
                meta = loop.metadata(self.configs[i], step, self.histories[i], seconds)
                meta["nonfinite_step"] = int(self.nonfinite[i])
                metadatas.append(meta)
            names = [f.name for f in self.folders[: self.num_real]]
            block_metadata = {
                "members": names,
                "metadata": metadatas,
                "slots": len(self.folders),  # the stored arrays' leading axis
                "sweep_id": self.run.sweep_id,
            }
            self.checkpointer.save(step, copy, block_metadata)

        return save

    def finish_task(self, test, results: list, offset: int) -> Callable[[], None]:
        to_host = self._taken()

        def finish():
            to_host()
            test_scores = mesh_lib.to_host(test)
            seconds = self.seconds()
            if self.checkpointer:  # results.json comes last
                self.checkpointer.wait_until_finished()
            for i in range(self.num_real):
                config, history = self.configs[i], self.histories[i]
                final = {k: history[-1][k] for k in metrics.keys("val")}
                final |= {k: float(v[i]) for k, v in test_scores.items()}
                member_results = train.make_results(config, final, seconds)
                if self.nonfinite[i] >= 0:
                    step = int(self.nonfinite[i]) + 1
                    member_results["diverged_at_step"] = step
                    warning = (
                        f"member {self.folders[i].name} diverged: "
                        f"{loop.divergence(config, step)}"
                    )
                    member_results["warnings"].append(warning)
                    log.warning("%s", warning)
                if self.chief:
                    write_finish(
                        self.folders[i],
                        self.run.hparams[int(self.folders[i].name)],
                        member_results,
                        history,
                    )
                results[offset + i] = {**member_results, "history": history}

        return finish
