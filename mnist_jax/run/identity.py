"""What makes two runs the same run: the config fields that must match to resume or to
read a checkpoint as one's own, and the data, identified by content."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from mnist_jax.config import parts
from mnist_jax.config import schema as config_schema
from mnist_jax.errors import UserError
from mnist_jax.run import workdir as workdir_lib
from mnist_jax.run import writers

# Where a run or a sweep runs, not what it computes: the mesh, and how many of a
# sweep's members share a device.
LAYOUT_FIELDS = ("mesh.shape", "sweep_block.members_per_device")
# A resumed run may change these, nothing else: more steps extend it.
RESUMABLE_FIELDS = ("train.num_steps", *LAYOUT_FIELDS)
# Where the data was read from: the run's data is identified by its content instead
# (run_info.json's `content_sha256`, checked by `check_data`), so the same data in a
# new folder, or the same path spelt another way, is the same run.
DATA_LOCATION_FIELDS = ("data.source", "data.path", "data.url")


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flat_config(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def _identity(config: dict) -> dict[str, Any]:
    """The flat fields that make two configs the same run."""
    ignored = RESUMABLE_FIELDS + DATA_LOCATION_FIELDS
    return {k: v for k, v in flat_config(config).items() if k not in ignored}


def config_hash(config: dict) -> str:
    """Identifies a run's config up to the fields a resume may change."""
    flat = _identity(config)
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def check_resumable(saved: dict, current: dict, workdir: Path) -> None:
    """Refuses `current` on a workdir whose run was `saved`. The saved config is
    filled onto today's defaults first, so a field added since it was written takes
    its default rather than blocking the resume."""
    differing = differing_fields(saved, current, ignored=RESUMABLE_FIELDS)
    if differing:
        raise UserError(
            f"{workdir} holds a run of another config; differing fields: "
            f"{', '.join(differing)}. Use a new --workdir, or the same config "
            "(only train.num_steps may change, to extend a run)"
        )


def identity_fields(
    config: dict, ignored=(), where: str | os.PathLike = "a saved config"
) -> dict[str, Any]:
    """`config`'s flat fields filled onto today's defaults (`with_defaults`, an
    unreadable field naming `where`), less `ignored` and where the data was read
    from: what two configs share when they are the same run."""
    skip = (*ignored, *DATA_LOCATION_FIELDS)
    filled = flat_config(with_defaults(config, where).to_dict())
    return {k: v for k, v in filled.items() if k not in skip}


def differing_fields(
    old: dict, new: dict, ignored=(), where: str | os.PathLike = "a saved config"
) -> list[str]:
    """'NAME (OLD -> NEW)' for each field two configs differ in (`identity_fields`;
    `where` names `old` in an error)."""
    return changes(identity_fields(old, ignored, where), identity_fields(new, ignored))


def changes(old_flat: dict, new_flat: dict) -> list[str]:
    """'NAME (OLD -> NEW)' for each key two flat configs differ in, sorted."""
    return [
        f"{k} ({old_flat.get(k)!r} -> {new_flat.get(k)!r})"
        for k in sorted(old_flat.keys() | new_flat.keys())
        if old_flat.get(k) != new_flat.get(k)
    ]


def recorded_data_sha256(workdir: str | os.PathLike) -> str | None:
    """The `content_sha256` of the data the run in `workdir` was trained on, from its
    run_info.json; None for a workdir that recorded none."""
    path = Path(workdir) / workdir_lib.RUN_INFO_FILE
    if not path.is_file():
        return None
    data = writers.read_json(path).get("data", {})
    sha256 = data.get("content_sha256") if isinstance(data, dict) else data
    if sha256 is None:  # a workdir from before data was recorded
        return None
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise UserError(f"{path}: data.content_sha256 is not a sha256 ({sha256!r})")
    return sha256


def check_data(workdir: str | os.PathLike, host, remedy: str) -> None:
    """Refuses data (`data.HostData`) other than the examples the run in `workdir`
    was trained on, in one line ending with `remedy`; no check if it recorded none."""
    expected = recorded_data_sha256(workdir)
    if expected is None or expected == host.content_sha256:
        return
    raise UserError(
        f"{workdir} was trained on data with sha256 {expected[:12]}, but "
        f"{host.where()} holds data with sha256 {host.content_sha256[:12]}; {remedy}"
    )


def with_defaults(
    saved: dict, where: str | os.PathLike = "a saved config"
) -> ConfigDict:
    """A saved config dict filled onto today's defaults, so a workdir from before a
    field existed still reads (the field takes its default). A value of the wrong type
    (an edited file) is a one-line `UserError` naming `where` and the field."""
    flat = flat_config(saved)
    config = config_schema.default_config()
    for name, default in config_schema.leaves(config_schema.default_config()):
        if name in flat:
            value = flat[name]
            try:
                value = tuple(value) if isinstance(default, tuple) else value
                config_schema.set_field(config, name, value)
            except (TypeError, ValueError) as e:
                raise UserError(
                    f"{where}: {name}={value!r} cannot be read as a "
                    f"{type(default).__name__} ({e})"
                ) from None
    return config


def recorded_config(config: ConfigDict, resolved: tuple[str, str]) -> dict:
    """config.json's contents: `config` with the data source that `data.resolve` chose
    (`resolved`, never `auto`) and the path made absolute, so the run's data is found
    again from any directory, whatever `$MNIST_JAX_DATA_DIR` or the cache say later."""
    source, path = resolved
    path = os.path.abspath(path) if path and source != "embedded" else ""
    recorded = config.to_dict()
    recorded["data"] |= {"source": source, "path": path}
    return recorded


def read_config(workdir: str | os.PathLike) -> ConfigDict:
    path = Path(workdir) / workdir_lib.CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"{workdir}: no {workdir_lib.CONFIG_FILE}; is it a mnist_jax workdir?"
        )
    parts.import_recorded(workdir_lib.recorded_parts(workdir), str(workdir))
    return with_defaults(writers.read_json(path), path)
