"""One run of the notebook's experiment, from config to a complete workdir.

`train_and_evaluate` is what `main.py` calls and what a notebook calls. The compiled
work happens in `steps.Program`, one call per chunk; chunks end at period ends (where
the run evaluates) and at checkpoint steps. A workdir with checkpoints is resumed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
from flax import nnx

from mnist_jax import (
    checkpoints,
    compilation,
    config_schema,
    data,
    loop,
    models,
    plots,
    steps,
    writers,
)
from mnist_jax import mesh as mesh_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)


def make_program(config, device_mesh=None) -> steps.Program:
    graphdef, _ = nnx.split(checkpoints.abstract_model(config))
    return steps.Program(
        graphdef, config.train.batch_size, config.optim.loss_reduction, device_mesh
    )


def make_init(config, num_pool: int, num_train: int, program: steps.Program):
    """`init(seed, learning_rate, clip_norm) -> (TrainState, Member)`: pure, so a sweep
    can vmap it over its members."""

    def init(seed, learning_rate, clip_norm):
        _, params = nnx.split(models.make_model(config.model, seed))
        train_idx, val_idx = data.split_indices(seed, num_pool, num_train)
        key = jax.random.key(seed)
        member = steps.Member(train_idx, val_idx, key, learning_rate, clip_norm)
        return program.init_state(params), member

    return init


def init_run(
    config, host: data.HostData
) -> tuple[steps.Program, steps.TrainState, steps.Member]:
    """The program, its initial state and the seed's train/validation split.

    Initialisation runs as one compiled call: done eagerly, each of its small ops would
    be compiled on its own, which costs seconds on a model this size."""
    program = make_program(config)
    state, member = compilation.run_once(
        make_init(config, len(host.pool_labels), host.num_train, program),
        jnp.int32(config.seed),
        jnp.float32(config.optim.learning_rate),
        jnp.float32(config.optim.clip_norm),
    )
    return program, state, member


def finish(config, workdir, host, history, final, model, run_info, start) -> dict:
    """Writes results.json, the figures and the completed run_info.json."""
    results = {
        "val/accuracy": float(final["val/accuracy"]),
        "val/log_loss": float(final["val/log_loss"]),
        "test/accuracy": float(final["test/accuracy"]),
        "test/log_loss": float(final["test/log_loss"]),
        "num_steps": config.train.num_steps,
        "train_seconds": run_info["train_seconds"],
    }
    if not mesh_lib.is_chief():
        return results
    writers.write_json(workdir / workdir_lib.RESULTS_FILE, results)
    first_layer = model.first_layer_kernel if isinstance(model, models.MLP) else None
    plots.write_run_figures(
        workdir, history, final, host.test_images, host.test_labels, first_layer
    )
    run_info["wall_seconds"] = time.perf_counter() - start
    writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
    log.info(
        "Validation accuracy %.4f, test accuracy %.4f (log loss %.4f / %.4f). Workdir: %s",
        results["val/accuracy"],
        results["test/accuracy"],
        results["val/log_loss"],
        results["test/log_loss"],
        workdir,
    )
    return results


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
    checkpoints.check_resumable(saved_config, config.to_dict(), workdir)
    if host is not None:
        checkpoints.check_data(
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


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
    """Trains `config` into `workdir` (resuming what is there) and returns
    `results.json`'s contents."""
    start = time.perf_counter()
    config_schema.validate(config)
    resolved = data.resolve(config.data)
    num_pool, num_train = data.split_sizes(
        resolved[0], config.data.num_examples, config.data.num_train
    )
    if config.train.batch_size > num_train:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} exceeds the {num_train} "
            "training rows"
        )
    device_mesh = mesh_lib.make_mesh(config.mesh.shape)
    if mesh_lib.MEMBERS in device_mesh.shape:
        raise ConfigError(
            f"mesh.shape={tuple(config.mesh.shape)!r} has a members axis, which only a "
            "sweep uses; give a single run (data,) or ()"
        )
    mesh_lib.check_batch(device_mesh, config.train.batch_size)
    replicated = mesh_lib.replicated(device_mesh)
    program = make_program(config, device_mesh)
    init = make_init(config, num_pool, num_train, program)
    init_args = (
        jnp.int32(config.seed),
        jnp.float32(config.optim.learning_rate),
        jnp.float32(config.optim.clip_norm),
    )
    state_spec, member_spec = mesh_lib.specs(
        jax.eval_shape(init, *init_args), replicated
    )
    with ThreadPoolExecutor(max_workers=1) as compiler:
        # Initialisation and then the training program compile (GIL released) while
        # the data loads.
        init_ready = compilation.compile_async(
            compiler,
            jax.jit(init, out_shardings=replicated),
            *init_args,
            options=compilation.RUN_ONCE_OPTIONS,
        )
        chunk_ready = compilation.compile_async(
            compiler,
            jax.jit(program.chunk, donate_argnums=0),
            state_spec,
            *mesh_lib.specs((jnp.int32(0), jnp.bool_(True)), replicated),
            mesh_lib.specs(data.pool_spec(num_pool), replicated),
            member_spec,
        )
        host = data.load(config.data, resolved)
        # Only now that config and data are known good does the workdir get touched.
        workdir = workdir_lib.prepare(workdir)
        dataset = data.to_device(host, replicated)
        state, member = init_ready.result()(*init_args)
        final_ready = compilation.compile_async(
            compiler,
            jax.jit(program.final_evaluation),
            state_spec.params,
            dataset,
            member_spec,
            options=compilation.RUN_ONCE_OPTIONS,
        )

        chief = mesh_lib.is_chief()
        with contextlib.ExitStack() as stack:
            if chief:  # the other processes of a multi-host run belong to its run
                stack.enter_context(workdir_lib.lock(workdir))
            checkpointer = stack.enter_context(
                checkpoints.Checkpointer(workdir, config.checkpoint.steps)
            )
            state, history, seconds_before = resume(
                checkpointer, config, state, workdir, host
            )
            run_info = {
                "data": host.fingerprint(),
                **workdir_lib.environment(),
                "mesh": mesh_lib.describe(device_mesh),
            }
            if chief:
                stack.enter_context(workdir_lib.log_file(workdir))
                recorded = checkpoints.recorded_config(config, resolved)
                writers.write_json(workdir / workdir_lib.CONFIG_FILE, recorded)
                writers.rewrite_metrics(workdir, history)
                writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
            chunk = chunk_ready.result()
            run_info["startup_seconds"] = time.perf_counter() - start
            plots.preload()

            train_start = time.perf_counter()
            state = loop.train_chunks(
                config,
                chunk,
                state,
                dataset.without_test(),
                member,
                history,
                checkpointer,
                workdir,
                seconds_before,
            )
            run_info["train_seconds"] = (
                seconds_before + time.perf_counter() - train_start
            )
            final = mesh_lib.to_host(
                final_ready.result()(state.params, dataset, member)
            )
            model = nnx.merge(program.graphdef, mesh_lib.to_host(state.params))
            results = finish(
                config, workdir, host, history, final, model, run_info, start
            )
    return results
