"""The host side of training: run the compiled chunks in order, write a metrics row at
each period end, save at each checkpoint step, and stop cleanly when told to (SIGINT,
SIGTERM) or when the loss diverges, never saving a bad state."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mnist_jax.core import metrics, steps
from mnist_jax.data import Dataset
from mnist_jax.errors import TrainingDiverged
from mnist_jax.platform import mesh as mesh_lib
from mnist_jax.platform import startup
from mnist_jax.run import checkpoints, identity, interrupts, schedule, writers

log = logging.getLogger(__name__)


class EpochOrders:
    """Each epoch's row order, drawn once on the device (`order`, a compiled
    `steps.Program.epoch_order`) and kept while a chunk may still need it; a chunk's
    training program takes the orders of the epochs it touches
    (`steps.Program.chunk_epochs` of them, the slots past the chunk's last epoch
    filled with that epoch's, unread)."""

    def __init__(self, program: steps.Program, order: Callable, member):
        self._program, self._order, self._member = program, order, member
        self._drawn: dict[int, object] = {}

    def __call__(self, done: int, num_steps: int) -> tuple:
        per_epoch = self._program.steps_per_epoch(self._member)
        first, last = done // per_epoch, (done + num_steps - 1) // per_epoch
        slots = self._program.chunk_epochs(num_steps, self._member)
        epochs = [min(first + i, last) for i in range(slots)]
        self._drawn = {e: o for e, o in self._drawn.items() if e >= first}
        for epoch in epochs:
            if epoch not in self._drawn:
                self._drawn[epoch] = self._order(self._member, np.int32(epoch))
        return tuple(self._drawn[e] for e in epochs)


def orders_for(program: steps.Program, member, done: int, num_steps: int) -> tuple:
    """The epoch orders one `train_steps` call from step `done` takes, drawn as a run
    draws them: for a single call outside a run (a notebook, a test, the benchmark)."""
    return EpochOrders(program, _epoch_order(program), member)(done, num_steps)


@functools.cache
def _epoch_order(program: steps.Program) -> Callable:
    return startup.jit(program.epoch_order, run_once=True)


@dataclasses.dataclass(frozen=True)
class CompiledLoops:
    """A run's training loops, one per trip count, each compiled on `compiler`'s thread
    when first asked for (`submit`, ahead of time) and waited for when called: a
    resume off the schedule compiles its own."""

    compiler: startup.Compiler
    train: Callable  # the jitted loop: (state, num_steps, pool, member, orders)
    program: steps.Program
    state: object  # the arguments' shapes (`jax.ShapeDtypeStruct`s) or values
    pool: object
    member: object
    order: object  # one epoch's order
    _ready: dict = dataclasses.field(default_factory=dict)

    def submit(self, num_steps: int):
        if num_steps not in self._ready:
            orders = (self.order,) * self.program.chunk_epochs(num_steps, self.member)
            self._ready[num_steps] = self.compiler.submit(
                self.train, self.state, num_steps, self.pool, self.member, orders
            )
        return self._ready[num_steps]

    def __call__(self, num_steps: int) -> Callable:
        return self.submit(num_steps).result()


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What every chunk of a run, or of a block of sweep members, trains with. The
    training loop has a static trip count, so there is one compiled program per trip
    count (`schedule.loop_lengths`; a chunk is one or more calls); the epochs' row
    orders and the evaluation are calls of their own, so no program holds a
    conditional (on a GPU, a round trip to the host every step)."""

    # trip count -> (state, pool, member, orders) -> (state, first non-finite step),
    # as `steps.Program.train_steps`; the state is donated
    train: Callable[[int], Callable]
    pool: Dataset  # the training programs never see the test set
    member: steps.Member
    orders: EpochOrders
    lengths: Sequence[int]  # the trip counts compiled ahead of time

    def run(self, state, done: int, end: int):
        """Steps `done` to `end` (the host's count: reading `state.step` would wait for
        the device) as `schedule.calls` of the compiled loops; returns the state and
        each call's first non-finite step, still on the device, to be read together
        once per chunk."""
        nonfinite = []
        for length in schedule.calls(end - done, self.lengths):
            state, first_nonfinite = self.train(length)(
                state, self.pool, self.member, self.orders(done, length)
            )
            nonfinite.append(first_nonfinite)
            done += length
        return state, nonfinite


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Where a run's loop writes: metrics rows, checkpoints, and what it had before."""

    workdir: Path
    checkpointer: checkpoints.Checkpointer
    history: list[dict]  # metrics rows so far (a resume's, then this run's)
    seconds_before: float  # training seconds of the run before this resume


def metadata(config, step: int, history: list[dict], train_seconds: float) -> dict:
    """A checkpoint's metadata item: what a resume restores besides the arrays, and the
    config it checks (a single run's and each sweep member's alike)."""
    config_dict = config.to_dict()
    return {
        "step": step,
        "history": history,
        "config": config_dict,
        "config_hash": identity.config_hash(config_dict),
        "train_seconds": train_seconds,
    }


def train_chunks(config, trainer: Trainer, evaluate: Callable, state, files: RunFiles):
    """Runs the chunks from `state.step` to `train.num_steps`, evaluating
    (`evaluate(params, pool, member)`) at period ends; returns the final state."""
    num_steps = config.train.num_steps
    evaluate_at = set(schedule.period_ends(num_steps, config.train.num_periods))
    save_at = set(schedule.save_steps(config))
    history, checkpointer = files.history, files.checkpointer
    done = first = int(state.step)
    last_saved = done
    clock = time.perf_counter()

    def save(step):
        writer.flush()
        seconds = files.seconds_before + time.perf_counter() - clock
        checkpointer.save(step, state, metadata(config, step, history, seconds))

    chief = mesh_lib.is_chief()
    with (
        writers.MetricWriter(files.workdir, enabled=chief) as writer,
        interrupts.deferred() as received,
    ):
        writer.write_hparams(config.to_dict())
        for end in schedule.chunk_ends(config, done):
            candidate, nonfinite = trainer.run(state, done, end)
            # Dispatched at once: the device evaluates while the host waits for both.
            scores = {}
            if end in evaluate_at:
                scores = evaluate(candidate.params, trainer.pool, trainer.member)
            nonfinite, scores = mesh_lib.to_host((nonfinite, scores))
            nonfinite = next((s for s in nonfinite if s >= 0), -1)  # the first call's
            if int(nonfinite) >= 0:
                error = diverged(config, int(nonfinite) + 1, last_saved)
                log.error("%s", error, extra={"console": False})
                raise error
            state, done = candidate, end
            if end in evaluate_at:
                scores = {k: float(v) for k, v in scores.items()}
                writer.write_scalars(end, scores)
                history.append({"step": end, **scores})
                rate = (end - first) / (time.perf_counter() - clock)
                log_period(end, num_steps, scores, rate)
            if end in save_at:
                save(end)
                last_saved = end
            if interrupts.agree(received):
                if last_saved != done:
                    save(done)
                raise interrupts.stopped(
                    received,
                    f"at step {done}",
                    f"checkpoint saved in {checkpointer.directory}",
                )
    return state


def divergence(config, step: int) -> str:
    """What diverged where, with the settings to lower: a run's error, a member's
    warning."""
    return (
        f"loss or gradients became NaN/inf at step {step} "
        f"(optim.learning_rate={config.optim.learning_rate}, "
        f"optim.clip_norm={config.optim.clip_norm})"
    )


def diverged(config, step: int, last_saved: int) -> TrainingDiverged:
    kept = f"step {last_saved}" if last_saved else "none yet"
    return TrainingDiverged(
        f"{divergence(config, step)}; last good checkpoint: {kept}. "
        "Lower --config.optim.learning_rate or --config.optim.clip_norm"
    )


def log_period(
    step: int, num_steps: int, scores: dict, steps_per_second: float
) -> None:
    values = ", ".join(
        f"{name.replace('_', ' ')} train {scores[metrics.key('train', name)]:.4f} "
        f"val {scores[metrics.key('val', name)]:.4f}"
        for name in metrics.METRICS
    )
    log.info(
        "step %d/%d: %s, %.0f steps/s, ETA %.1fs",
        step,
        num_steps,
        values,
        steps_per_second,
        (num_steps - step) / max(steps_per_second, 1e-9),
    )
