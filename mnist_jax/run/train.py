"""One run of the notebook's experiment, from config to a complete workdir.

`train_and_evaluate` is what `main.py` calls and what a notebook calls; it reads top to
bottom: config, input, mesh, model and optimizer, compiled programs, workdir and
checkpoints, the training loop, the final evaluation and the run's files. The compiled
work is `steps.Program`, a few calls per chunk; chunks end at period ends (where the run
evaluates) and at checkpoint steps. A workdir with checkpoints is resumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mnist_jax import data, plots
from mnist_jax.config import parts
from mnist_jax.config import schema as config_schema
from mnist_jax.core import metrics, programs, steps
from mnist_jax.data.readers import NUM_CLASSES
from mnist_jax.errors import ConfigError, UserError
from mnist_jax.platform import mesh as mesh_lib
from mnist_jax.platform import startup
from mnist_jax.run import checkpoints, identity, loop, schedule, writers
from mnist_jax.run import workdir as workdir_lib

log = logging.getLogger(__name__)

# Validation accuracy under this multiple of chance (1 / 10) means nothing was learnt.
CHANCE_MULTIPLE = 2.0


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
    """Trains `config` into `workdir` (resuming what is there) and returns
    `results.json`'s contents."""
    start = time.perf_counter()
    parts.import_recorded(workdir_lib.recorded_parts(workdir), str(workdir))
    config_schema.validate(config)

    source, num_pool, num_train = _input_sizes(config)
    device_mesh = _single_run_mesh(config)
    replicated = mesh_lib.replicated(device_mesh)

    # Model, optimizer and update step: one pure program, compiled ahead of time.
    program = programs.make_program(config, device_mesh)
    init = programs.make_init(config, num_pool, num_train, program)
    init_args = programs.init_arguments(config)
    state_spec, member_spec = mesh_lib.specs(
        jax.eval_shape(init, *init_args), replicated
    )
    with startup.Compiler() as compiler:
        ahead = _AheadOfTime(compiler, program, replicated, state_spec, member_spec)
        init_ready = ahead.submit(init, *init_args, out_shardings=replicated)
        loops = ahead.loops(num_pool, num_train)
        first_length, *later_lengths = schedule.loop_lengths(config)
        loops.submit(first_length)
        epoch = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
        order_ready = ahead.submit(program.epoch_order, member_spec, epoch)
        evaluate_ready = compiler.submit(
            startup.jit(program.pool_scores), state_spec.params, loops.pool, member_spec
        )
        host = data.load(config.data, source)
        for length in later_lengths:
            loops.submit(length)
        dataset = data.to_device(host, replicated)
        final_ready = ahead.submit(
            program.final_evaluation, state_spec.params, dataset, member_spec
        )

        # Workdir: touched only now that config and data are known good.
        workdir = workdir_lib.prepare(workdir)
        chief = mesh_lib.is_chief()  # process 0 writes; all take part in checkpoints
        with contextlib.ExitStack() as stack:
            stack.enter_context(workdir_lib.lock(workdir))  # all processes agree
            checkpointer = stack.enter_context(
                checkpoints.Checkpointer(workdir, config.checkpoint.steps)
            )
            state, member = init_ready.result()(*init_args)
            state, history, seconds_before = resume(
                checkpointer, config, state, workdir, host
            )
            run_info = {
                "data": host.fingerprint(),
                **workdir_lib.environment(),
                "mesh": mesh_lib.describe(device_mesh),
                "matmul_precision": config.train.matmul_precision,
                parts.RUN_INFO_KEY: parts.origins(config, source[0]),
            }
            if chief:
                stack.enter_context(workdir_lib.log_file(workdir))
                recorded = identity.recorded_config(config, source)
                writers.write_json(workdir / workdir_lib.CONFIG_FILE, recorded)
                writers.rewrite_metrics(workdir, history)
                writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
            trainer = loop.Trainer(
                train=loops,
                pool=dataset.without_test(),
                member=member,
                orders=loop.EpochOrders(program, order_ready.result(), member),
                lengths=schedule.loop_lengths(config),
            )
            for end in schedule.chunk_ends(config, int(state.step))[:1]:
                # Start-up ends once training can start.
                trainer.train(schedule.calls(end - int(state.step), trainer.lengths)[0])
            run_info["startup_seconds"] = time.perf_counter() - start

            # The loop: chunks between period ends and checkpoint steps.
            startup.preload_figures()
            train_start = time.perf_counter()
            state = loop.train_chunks(
                config,
                trainer,
                # Training starts while the evaluation still compiles.
                lambda *args: evaluate_ready.result()(*args),
                state,
                loop.RunFiles(workdir, checkpointer, history, seconds_before),
            )
            run_info["train_seconds"] = (
                seconds_before + time.perf_counter() - train_start
            )

            # Final evaluation and the run's files.
            final = mesh_lib.to_host(
                final_ready.result()(state.params, dataset, member)
            )
            model = nnx.merge(program.graphdef, mesh_lib.to_host(state.params))
            results = make_results(config, final, run_info["train_seconds"])
            if chief:
                write_outputs(workdir, results, history, final, model, host)
                run_info["wall_seconds"] = time.perf_counter() - start
                writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
    return results


def _input_sizes(config) -> tuple[tuple[str, str], int, int]:
    """Which data (`data.resolve`) and its split sizes, known before it is read (it
    loads while the programs compile)."""
    source = data.resolve(config.data)
    num_pool, num_train = data.split_sizes(
        source[0], config.data.num_examples, config.data.num_train
    )
    if config.train.batch_size > num_train:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} exceeds the {num_train} "
            "training rows"
        )
    return source, num_pool, num_train


def _single_run_mesh(config):
    """One device per process unless mesh.shape asks for data parallelism
    (mesh.default_devices says why); params replicated, rows split along "data"."""
    device_mesh = mesh_lib.make_mesh(config.mesh.shape)
    if mesh_lib.MEMBERS in device_mesh.shape:
        raise ConfigError(
            f"mesh.shape={tuple(config.mesh.shape)!r} has a members axis, which only a "
            "sweep uses; give a single run (data,) or ()"
        )
    mesh_lib.check_batch(device_mesh, config.train.batch_size)
    return device_mesh


@dataclasses.dataclass(frozen=True)
class _AheadOfTime:
    """Submits a run's programs to compile on `compiler`'s thread."""

    compiler: startup.Compiler
    program: steps.Program
    replicated: object  # the mesh's replicated sharding
    state_spec: steps.TrainState
    member_spec: steps.Member

    def submit(self, fn, *args, **jit_kwargs):
        """A program run once (or once per epoch): cheap XLA options."""
        return self.compiler.submit(startup.jit(fn, run_once=True, **jit_kwargs), *args)

    def loops(self, num_pool: int, num_train: int) -> loop.CompiledLoops:
        """The training loops, one per trip count (`schedule.loop_lengths`)."""
        return loop.CompiledLoops(
            compiler=self.compiler,
            train=startup.jit(
                self.program.train_steps, static_argnums=1, donate_argnums=0
            ),
            program=self.program,
            state=self.state_spec,
            pool=mesh_lib.specs(data.pool_spec(num_pool), self.replicated),
            member=self.member_spec,
            order=jax.ShapeDtypeStruct(
                (num_train,), jnp.int32, sharding=self.replicated
            ),
        )


def make_results(config, final: dict, train_seconds: float) -> dict:
    """`results.json`: every metric on validation and test, and any warning."""
    results = {k: float(final[k]) for k in metrics.keys("val", "test")}
    results |= {"num_steps": config.train.num_steps, "train_seconds": train_seconds}
    results["warnings"] = []
    chance = 1.0 / NUM_CLASSES
    if results["val/accuracy"] < CHANCE_MULTIPLE * chance:
        results["warnings"].append(
            f"validation accuracy {results['val/accuracy']:.4f} is at chance level "
            f"({chance:g} for {NUM_CLASSES} classes): the model learnt "
            f"nothing; try a lower optim.learning_rate (now "
            f"{config.optim.learning_rate}) or more steps"
        )
    return results


def write_outputs(workdir, results, history, final, model, host) -> None:
    """results.json and the figures; logs the scores and any warning."""
    writers.write_json(workdir / workdir_lib.RESULTS_FILE, results)
    first_layer = getattr(model, "first_layer", None)
    plots.write_run_figures(
        workdir,
        history,
        final,
        host.test_images,
        host.test_labels,
        None if first_layer is None else np.asarray(first_layer()),
    )
    scores = ", ".join(f"{k} {results[k]:.4f}" for k in metrics.keys("val", "test"))
    log.info("Results: %s. Workdir: %s", scores, workdir)
    for warning in results["warnings"]:
        log.warning("%s", warning)


def resume(
    checkpointer: checkpoints.Checkpointer,
    config,
    state: steps.TrainState,
    workdir,
    host: data.HostData | None = None,
):
    """The latest checkpoint's state, metrics history and training seconds so far, or the
    fresh `state` with none; refuses a checkpoint written under another config, or
    (given `host`) on other data than the run recorded."""
    step = checkpointer.latest_step()
    if step is None:
        return state, [], 0.0
    try:
        metadata = checkpointer.restore_metadata(step)
        saved_config = metadata["config"]
    except Exception as e:  # Orbax raises many types for a damaged or foreign folder
        raise UserError(
            f"{checkpointer.directory / str(step)}: not a readable mnist_jax checkpoint "
            f"({type(e).__name__}); move it away to resume from an earlier one"
        ) from e
    identity.check_resumable(saved_config, config.to_dict(), workdir)
    if host is not None:
        identity.check_data(
            workdir,
            host,
            "point --config.data.path at the run's data, or use a new --workdir",
        )
    if step > config.train.num_steps:
        raise UserError(
            f"{workdir} has a checkpoint at step {step}, beyond train.num_steps="
            f"{config.train.num_steps}; raise num_steps or use a new --workdir"
        )
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    try:
        params, opt_state, _ = checkpointer.restore(step, abstract)
    except Exception as e:
        raise UserError(
            f"{checkpointer.directory / str(step)}: checkpoint is damaged "
            f"({type(e).__name__}); move it away to resume from an earlier one"
        ) from e
    log.info("Resuming from the checkpoint at step %d.", step)
    step = jax.device_put(jnp.int32(step), state.step.sharding)
    state = steps.TrainState(step, params, opt_state)
    return state, metadata["history"], metadata["train_seconds"]
