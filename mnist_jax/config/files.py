"""Config files loaded by path, as `--config` does, so a notebook anywhere can use
`configs/*.py` without the repository on `sys.path`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from mnist_jax.errors import ConfigError

# Where `configs/` lives in a source checkout (and an editable install).
REPO = Path(__file__).resolve().parents[2]


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`load_config("configs/mlp.py:smoke")`: runs the file's `get_config("smoke")`, as
    `--config=configs/mlp.py:smoke` does; without `:ARG`, `get_config()`. A relative
    path is looked up in the working directory, then in the repository this package
    came from, so `configs/mlp.py` works from any folder."""
    path, arg = _split(spec)
    candidates = [path] if path.is_absolute() else [path, REPO / path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        tried = " or ".join(str(p.resolve()) for p in candidates)
        raise ConfigError(f"config file {spec!r} not found (tried {tried})")
    module_spec = importlib.util.spec_from_file_location(
        f"mnist_jax_config_{found.stem}", found
    )
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"config file {found} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {found} defines no get_config(arg=None)")
    return check_loaded(get_config() if arg is None else get_config(arg), spec)


def check_loaded(config, spec: str | None):
    """`config`, what a config file's `get_config` returned, if it is a `ConfigDict`:
    anything else (a plain dict, None) is a one-line `ConfigError` naming the file,
    not a `KeyError` further on."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"config file {spec}: get_config() returned {type(config).__name__}, not an "
            "ml_collections.ConfigDict (build it with "
            "mnist_jax.config.schema.default_config())"
        )
    return config


def _split(spec: str) -> tuple[Path, str | None]:
    """ "configs/mlp.py:smoke" -> (Path("configs/mlp.py"), "smoke"), split at the first
    colon as `--config` does; a spec that names an existing file whole is all path."""
    path, colon, arg = spec.partition(":")
    if not colon or Path(spec).expanduser().is_file():
        return Path(spec).expanduser(), None
    return Path(path).expanduser(), arg
