"""One run of the notebook's experiment, from config to a complete workdir.

`train_and_evaluate` is what `main.py` calls and what a notebook calls; the compiled
work happens in `steps.Program`, one call per period.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mnist_jax import config_schema, data, metrics, models, plots, steps, writers
from mnist_jax.errors import ConfigError, UserError

CONFIG_FILE, RUN_INFO_FILE, RESULTS_FILE = (
    "config.json",
    "run_info.json",
    "results.json",
)
# For programs that run once (initialisation, final evaluation), LLVM's optimisation
# passes cost more compile time than they save: ~1.4 s less start-up on a CPU.
RUN_ONCE_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def run_once(fn, *args):
    """Compiles `fn` for `args` with cheap options and calls it."""
    compiled = (
        jax.jit(fn).lower(*args).compile(compiler_options=RUN_ONCE_COMPILER_OPTIONS)
    )
    return compiled(*args)


def period_ends(num_steps: int, num_periods: int) -> list[int]:
    """Steps after which each period's evaluation happens; the last is `num_steps`."""
    return sorted(
        {round(num_steps * (p + 1) / num_periods) for p in range(num_periods)}
    )


def init_run(
    config, host: data.HostData
) -> tuple[steps.Program, steps.TrainState, steps.Member]:
    """The program, its initial state and the seed's train/validation split.

    Initialisation runs as one compiled call: done eagerly, each of its small ops would
    be compiled on its own, which costs seconds on a model this size."""
    abstract_model = nnx.eval_shape(lambda: models.make_model(config.model, 0))
    graphdef, _ = nnx.split(abstract_model)
    program = steps.Program(
        graphdef, config.train.batch_size, config.optim.loss_reduction
    )

    def init(seed, learning_rate, clip_norm):
        _, params = nnx.split(models.make_model(config.model, seed))
        train_idx, val_idx = data.split_indices(
            seed, len(host.pool_labels), host.num_train
        )
        member = steps.Member(
            train_idx, val_idx, jax.random.key(seed), learning_rate, clip_norm
        )
        return program.init_state(params), member

    state, member = run_once(
        init,
        jnp.int32(config.seed),
        jnp.float32(config.optim.learning_rate),
        jnp.float32(config.optim.clip_norm),
    )
    return program, state, member


def prepare_workdir(workdir: str | os.PathLike) -> Path:
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"workdir {workdir} exists and is not a folder")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"workdir {workdir} cannot be created ({e.strerror})") from None
    if not os.access(workdir, os.W_OK):
        raise UserError(f"workdir {workdir} is not writable")
    return workdir


def environment() -> dict:
    import flax
    import optax

    return {
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "numpy": np.__version__,
        },
        "platform": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "host": platform.node(),
        "command": " ".join(sys.argv),
    }


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
    """Trains `config` into `workdir` and returns `results.json`'s contents."""
    start = time.perf_counter()
    config_schema.validate(config)
    host = data.load(config.data)
    if config.train.batch_size > host.num_train:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} exceeds the {host.num_train} "
            "training rows"
        )
    # Only now that config and data are known good does the workdir get touched.
    workdir = prepare_workdir(workdir)
    writers.write_json(workdir / CONFIG_FILE, config.to_dict())
    dataset = data.to_device(host)
    program, state, member = init_run(config, host)
    run_info = {"data": host.fingerprint(), **environment()}
    writers.write_json(workdir / RUN_INFO_FILE, run_info)

    period = jax.jit(program.period, donate_argnums=0)
    compile_start = time.perf_counter()
    period = period.lower(state, jnp.int32(1), dataset, member).compile()
    compile_seconds = time.perf_counter() - compile_start

    num_steps = config.train.num_steps
    history = []
    train_start = time.perf_counter()
    with writers.MetricWriter(workdir) as writer:
        writer.write_hparams(config.to_dict())
        done = 0
        for end in period_ends(num_steps, config.train.num_periods):
            state, scores = period(state, jnp.int32(end - done), dataset, member)
            scores = {k: float(v) for k, v in scores.items()}
            done = end
            writer.write_scalars(end, scores)
            history.append({"step": end, **scores})
            _log_period(end, num_steps, scores, time.perf_counter() - train_start)
    train_seconds = time.perf_counter() - train_start

    final = jax.device_get(
        run_once(program.final_evaluation, state.params, dataset, member)
    )
    results = {
        "val/accuracy": float(final["val/accuracy"]),
        "val/log_loss": float(final["val/log_loss"]),
        "test/accuracy": float(final["test/accuracy"]),
        "test/log_loss": float(final["test/log_loss"]),
        "num_steps": num_steps,
        "train_seconds": train_seconds,
    }
    writers.write_json(workdir / RESULTS_FILE, results)
    write_figures(
        workdir, history, final, host, nnx.merge(program.graphdef, state.params)
    )
    run_info.update(
        compile_seconds=compile_seconds,
        train_seconds=train_seconds,
        wall_seconds=time.perf_counter() - start,
    )
    writers.write_json(workdir / RUN_INFO_FILE, run_info)
    logging.info(
        "Validation accuracy %.4f, test accuracy %.4f (log loss %.4f / %.4f). Workdir: %s",
        results["val/accuracy"],
        results["test/accuracy"],
        results["val/log_loss"],
        results["test/log_loss"],
        workdir,
    )
    return results


def _log_period(step: int, num_steps: int, scores: dict, elapsed: float) -> None:
    rate = step / max(elapsed, 1e-9)
    logging.info(
        "step %d/%d: log loss train %.4f val %.4f, accuracy train %.4f val %.4f, "
        "%.0f steps/s, ETA %.1fs",
        step,
        num_steps,
        scores["train/log_loss"],
        scores["val/log_loss"],
        scores["train/accuracy"],
        scores["val/accuracy"],
        rate,
        (num_steps - step) / rate,
    )


def write_figures(workdir: Path, history: list[dict], final: dict, host, model) -> None:
    plots.save(
        plots.plot_log_loss(
            [h["step"] for h in history],
            [h["train/log_loss"] for h in history],
            [h["val/log_loss"] for h in history],
        ),
        workdir / "log_loss.png",
    )
    normalized = np.asarray(metrics.normalize_rows(final["val/confusion"]))
    plots.save(
        plots.plot_confusion_matrix(
            normalized, "Validation confusion matrix (row-normalised)"
        ),
        workdir / "confusion_matrix.png",
    )
    plots.save(
        plots.plot_examples(
            host.test_images, host.test_labels, final["test/predictions"]
        ),
        workdir / "examples.png",
    )
    if isinstance(model, models.MLP):
        plots.save(
            plots.plot_weight_grid(np.asarray(model.first_layer_kernel)),
            workdir / "first_layer_weights.png",
        )
