"""One run of the notebook's experiment, from config to a complete workdir.

`train_and_evaluate` is what `main.py` calls and what a notebook calls. The compiled
work happens in `steps.Program`, one call per chunk; chunks end at period ends (where
the run evaluates) and at checkpoint steps. A workdir with checkpoints is resumed.
"""

from __future__ import annotations

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
    models,
    plots,
    schedule,
    steps,
    writers,
)
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)


def make_program(config) -> steps.Program:
    graphdef, _ = nnx.split(checkpoints.abstract_model(config))
    return steps.Program(graphdef, config.train.batch_size, config.optim.loss_reduction)


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


def resume(
    checkpointer: checkpoints.Checkpointer, config, state: steps.TrainState, workdir
):
    """The latest checkpoint's state, metrics history and training seconds so far, or the
    fresh `state` with none; refuses a checkpoint written under another config."""
    step = checkpointer.latest_step()
    if step is None:
        return state, [], 0.0
    metadata = checkpointer.restore_metadata(step)
    checkpoints.check_resumable(metadata["config"], config.to_dict(), workdir)
    if step > config.train.num_steps:
        raise UserError(
            f"{workdir} has a checkpoint at step {step}, beyond train.num_steps="
            f"{config.train.num_steps}; raise num_steps or use a new --workdir"
        )
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    params, opt_state, _ = checkpointer.restore(step, abstract)
    log.info("Resuming from the checkpoint at step %d.", step)
    state = steps.TrainState(jnp.asarray(step, jnp.int32), params, opt_state)
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
    program = make_program(config)
    init = make_init(config, num_pool, num_train, program)
    init_args = (
        jnp.int32(config.seed),
        jnp.float32(config.optim.learning_rate),
        jnp.float32(config.optim.clip_norm),
    )
    state_spec, member_spec = jax.eval_shape(init, *init_args)
    with ThreadPoolExecutor(max_workers=1) as compiler:
        # The training program compiles (GIL released) while the data loads.
        chunk_ready = compilation.compile_async(
            compiler,
            jax.jit(program.chunk, donate_argnums=0),
            state_spec,
            jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.bool_),
            data.pool_spec(num_pool),
            member_spec,
        )
        plots.preload()
        host = data.load(config.data, resolved)
        # Only now that config and data are known good does the workdir get touched.
        workdir = workdir_lib.prepare(workdir)
        dataset = data.to_device(host)
        state, member = compilation.run_once(init, *init_args)
        final_ready = compilation.compile_async(
            compiler,
            jax.jit(program.final_evaluation),
            state_spec.params,
            dataset,
            member_spec,
            options=compilation.RUN_ONCE_OPTIONS,
        )

        with checkpoints.Checkpointer(workdir, config.checkpoint.steps) as checkpointer:
            state, history, seconds_before = resume(
                checkpointer, config, state, workdir
            )
            writers.write_json(workdir / workdir_lib.CONFIG_FILE, config.to_dict())
            writers.rewrite_metrics(workdir, history)
            run_info = {"data": host.fingerprint(), **workdir_lib.environment()}
            writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
            chunk = chunk_ready.result()
            startup_seconds = time.perf_counter() - start

            train_start = time.perf_counter()
            state = train_chunks(
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
            train_seconds = seconds_before + time.perf_counter() - train_start
        final = jax.device_get(final_ready.result()(state.params, dataset, member))
    results = {
        "val/accuracy": float(final["val/accuracy"]),
        "val/log_loss": float(final["val/log_loss"]),
        "test/accuracy": float(final["test/accuracy"]),
        "test/log_loss": float(final["test/log_loss"]),
        "num_steps": config.train.num_steps,
        "train_seconds": train_seconds,
    }
    writers.write_json(workdir / workdir_lib.RESULTS_FILE, results)
    model = nnx.merge(program.graphdef, state.params)
    first_layer = model.first_layer_kernel if isinstance(model, models.MLP) else None
    plots.write_run_figures(
        workdir, history, final, host.test_images, host.test_labels, first_layer
    )
    run_info.update(
        startup_seconds=startup_seconds,
        train_seconds=train_seconds,
        wall_seconds=time.perf_counter() - start,
    )
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


def train_chunks(
    config,
    chunk,
    state,
    dataset,
    member,
    history,
    checkpointer,
    workdir,
    seconds_before,
):
    """Runs the chunks from `state.step` to `num_steps`: a metrics row at each period
    end, a checkpoint (with the history so far) at each save step."""
    num_steps = config.train.num_steps
    evaluate_at = set(schedule.period_ends(num_steps, config.train.num_periods))
    save_at = set(schedule.save_steps(config))
    done = first = int(state.step)
    clock = time.perf_counter()
    with writers.MetricWriter(workdir) as writer:
        writer.write_hparams(config.to_dict())
        for end in sorted(s for s in evaluate_at | save_at if s > done):
            evaluate = end in evaluate_at
            state, scores = chunk(
                state, jnp.int32(end - done), jnp.bool_(evaluate), dataset, member
            )
            done = end
            if evaluate:
                scores = {k: float(v) for k, v in scores.items()}
                writer.write_scalars(end, scores)
                history.append({"step": end, **scores})
                _log_period(
                    end,
                    num_steps,
                    scores,
                    (end - first) / (time.perf_counter() - clock),
                )
            if end in save_at:
                writer.flush()
                checkpointer.save(
                    end,
                    state,
                    {
                        "step": end,
                        "history": history,
                        "config": config.to_dict(),
                        "config_hash": checkpoints.config_hash(config.to_dict()),
                        "train_seconds": seconds_before + time.perf_counter() - clock,
                    },
                )
    return state


def _log_period(
    step: int, num_steps: int, scores: dict, steps_per_second: float
) -> None:
    log.info(
        "step %d/%d: log loss train %.4f val %.4f, accuracy train %.4f val %.4f, "
        "%.0f steps/s, ETA %.1fs",
        step,
        num_steps,
        scores["train/log_loss"],
        scores["val/log_loss"],
        scores["train/accuracy"],
        scores["val/accuracy"],
        steps_per_second,
        (num_steps - step) / max(steps_per_second, 1e-9),
    )
