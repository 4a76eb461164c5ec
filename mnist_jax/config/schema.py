"""Every config field, its default and its meaning, in one place; and the checks on them.

`configs/*.py` start from `default_config()` and override what changes, so a field
has one definition, and `validate` can say "did you mean" for a misspelt one.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable

import ml_collections

from mnist_jax.core import models, optim, steps
from mnist_jax.data import SOURCES, download
from mnist_jax.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
    """The notebook's MLP experiment (`configs/mlp.py` is exactly this)."""
    config = ml_collections.ConfigDict()
    # Drives the train/validation shuffle, initial weights, batches and dropout.
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    # auto, or a registered data set: embedded | mlcc | idx (`data/sources.py`).
    config.data.source = "auto"
    # Folder with the notebook's CSVs or the IDX files; "" = none.
    config.data.path = ""
    # Where source=mlcc downloads the notebook's CSVs from, once.
    config.data.url = download.MLCC_BASE_URL
    # First rows of the training file used (the notebook: 10,000).
    config.data.num_examples = 10_000
    # Of those, after the seeded shuffle, the training rows; the rest validate.
    config.data.num_train = 7_500

    config.model = ml_collections.ConfigDict()
    # A `models.MODELS` name: linear | mlp, or any registered model.
    config.model.name = "mlp"
    # Then every registered model's own fields, with its defaults (its docstring
    # explains them): mlp's hidden_units (a tuple, so the command line can override
    # it) and dropout_rate (after each hidden layer, in training only).
    config.model.update(models.MODELS.defaults())

    config.optim = ml_collections.ConfigDict()
    # An `optim.OPTIMIZERS` name: adagrad (TF1's, the notebook's) | sgd | momentum |
    # adam | adamw, or any registered optimizer.
    config.optim.name = "adagrad"
    # Step size (the notebook's MLP solution: 0.05).
    config.optim.learning_rate = 0.05
    # Gradients are clipped to this global norm (the notebook: 5.0), for every optimizer.
    config.optim.clip_norm = 5.0
    # sum (TF1 canned estimators) | mean, over the batch.
    config.optim.loss_reduction = "sum"
    # Then every registered optimizer's own fields: momentum's momentum, adamw's
    # weight_decay.
    config.optim.update(optim.OPTIMIZERS.defaults())

    config.train = ml_collections.ConfigDict()
    # Total optimizer steps.
    config.train.num_steps = 1_000
    # Examples per step.
    config.train.batch_size = 30
    # Evaluations (points of the log-loss curve), evenly spread over training.
    config.train.num_periods = 10
    # Matmul arithmetic: float32 (TF1's, the default) | tensorfloat32 | bfloat16 |
    # default (the device's own: TF32 on a GPU, bfloat16 passes on a TPU).
    config.train.matmul_precision = "float32"

    config.checkpoint = ml_collections.ConfigDict()
    # Saved and kept forever (the notebook's three convergence levels).
    config.checkpoint.steps = (10, 100, 1000)
    # A rolling latest checkpoint for resumption; 0 = at each period end.
    config.checkpoint.every_steps = 0

    config.mesh = ml_collections.ConfigDict()
    # () = a run: one device per process (mesh.default_devices), a sweep: all devices
    # along "members"; (n,) the first n along "data"; (members, data) for sweeps.
    config.mesh.shape = ()

    config.sweep_block = ml_collections.ConfigDict()
    # Sweep members each device trains at once; 0 = as many as fit (mnist_jax.sweep.sizing).
    config.sweep_block.members_per_device = 0
    return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few-second variant for tests: offline data, few steps, small pool."""
    config.data.source = "embedded"
    config.data.num_examples = 1_000
    config.data.num_train = 750
    config.train.num_steps = 20
    config.train.num_periods = 2
    config.checkpoint.steps = (5, 10, 20)
    return config


def variant(
    config: ml_collections.ConfigDict,
    arg: str | None,
    known: dict[str, Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]],
) -> ml_collections.ConfigDict:
    """`get_config(arg)`'s answer to `--config=FILE:arg`: `config` itself when there is
    no `arg`, `known[arg](config)` for a known one, a `ConfigError` naming them for any
    other (a typo must not silently run the full config)."""
    if not arg:
        return config
    if arg not in known:
        raise ConfigError(
            f"unknown config variant {arg!r}; known: {', '.join(sorted(known))}"
        )
    return known[arg](config)


def set_field(config, name: str, value) -> None:
    """`set_field(config, "optim.learning_rate", 0.1)`: a dotted name's field, set."""
    *groups, field = name.split(".")
    for group in groups:
        config = config[group]
    config[field] = value


def with_sweep(config: ml_collections.ConfigDict, axes: dict[str, tuple]):
    """Adds a `sweep` group with `axes` ({"optim.learning_rate": (...), ...}) as nested
    fields, so each axis can be overridden from the command line."""
    nested: dict = {}
    for name, values in axes.items():
        *groups, field = name.split(".")
        target = nested
        for group in groups:
            target = target.setdefault(group, {})
        target[field] = tuple(values)
    config.sweep = ml_collections.ConfigDict(nested)
    return config


def leaves(config, prefix=""):
    """(dotted name, value) of every field, depth first."""
    yield from _leaves(config, prefix)


def _leaves(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def unknown_field_message(name: str) -> str | None:
    """None for a known field name like 'train.num_steps', else what to say about it."""
    known = dict(_leaves(default_config()))
    if name in known:
        return None
    guess = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    return f"unknown config field {name!r}{hint}"


def check_known_fields(config: ml_collections.ConfigDict) -> None:
    for name, _ in _leaves(config):
        if name.startswith("sweep."):
            continue  # a sweep's axes; checked by `sweep.axes`
        problem = unknown_field_message(name)
        if problem:
            raise ConfigError(problem)


def _positive_int(config, name: str) -> None:
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line `ConfigError` for the first value that cannot work."""
    check_known_fields(config)
    flat = dict(_leaves(config))
    _check_numbers(flat)
    _check_choices(config, flat)
    _check_counts(flat)


def _check_numbers(flat: dict) -> None:
    for name in (
        "data.num_examples",
        "data.num_train",
        "train.num_steps",
        "train.batch_size",
        "train.num_periods",
    ):
        _positive_int(flat, name)
    for name in ("optim.learning_rate", "optim.clip_norm"):
        value = flat[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not value > 0
        ):
            raise ConfigError(f"{name}={value!r} must be a positive number")
    if flat["data.num_train"] >= flat["data.num_examples"]:
        raise ConfigError(
            f"data.num_train={flat['data.num_train']} must be below data.num_examples="
            f"{flat['data.num_examples']} (the rest is the validation set)"
        )
    if flat["train.num_periods"] > flat["train.num_steps"]:
        raise ConfigError(
            f"train.num_periods={flat['train.num_periods']} exceeds train.num_steps="
            f"{flat['train.num_steps']}"
        )


def _check_choices(config: ml_collections.ConfigDict, flat: dict) -> None:
    """Registered names, and each registered part's own fields (`Registry.check`)."""
    if flat["data.source"] != "auto":
        SOURCES.entry(flat["data.source"])  # one line naming the choices if unknown
    for group, registry in (("model", models.MODELS), ("optim", optim.OPTIMIZERS)):
        registry.entry(config[group].name)  # one line naming the choices if unknown
        for field in registry.unused(config[group]):
            raise ConfigError(
                f"{group}.{field}={config[group][field]!r} is not used by {group} "
                f"{config[group].name!r}; leave it at its default "
                f"{registry.defaults()[field]!r}"
            )
        registry.check(config[group])
    for name, choices in (
        ("optim.loss_reduction", optim.LOSS_REDUCTIONS),
        ("train.matmul_precision", steps.MATMUL_PRECISIONS),
    ):
        if flat[name] not in choices:
            raise ConfigError(
                f"{name}={flat[name]!r} is not one of {', '.join(choices)}"
            )


def _check_counts(flat: dict) -> None:
    """The checkpoint and sweep-block fields: integers where 0 means a default."""
    for name, zero in (
        ("checkpoint.every_steps", "each period end"),
        ("sweep_block.members_per_device", "auto"),
    ):
        value = flat[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or value < 0
        ):
            raise ConfigError(f"{name}={value!r} must be 0 ({zero}) or positive")
    kept = flat["checkpoint.steps"]
    if not isinstance(kept, tuple | list) or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0
        for s in kept
    ):
        raise ConfigError(
            f"checkpoint.steps={kept!r} must be a tuple of positive integers "
            "(steps beyond train.num_steps are fine: a longer run reaches them)"
        )
