"""A sweep's grid: the axes a sweep config names (or `--axis` adds), every member's
config, and the groups of members that can share one compiled program."""

from __future__ import annotations

import ast
import itertools
import json

from ml_collections import ConfigDict

from mnist_jax.config import schema as config_schema
from mnist_jax.errors import ConfigError

# Per-member values that are arrays inside the compiled program; any other axis
# changes shapes or static structure and so starts a new group.
TRACED_FIELDS = ("seed", "optim.learning_rate", "optim.clip_norm")


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
