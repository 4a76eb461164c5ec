"""Orbax checkpoints under `WORKDIR/checkpoints`: chosen steps kept forever, plus a
rolling latest one for resumption; and the notebook-friendly way to read them back.

Params, optimizer state and metadata are separate items, so analysis restores the
params alone. Restores go into abstract targets (shapes only, from `nnx.eval_shape`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from flax import nnx
from ml_collections import ConfigDict

from mnist_jax import config_schema, mesh, models, startup
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
ITEMS = ("params", "opt_state", "metadata")
# A resumed run may change these, nothing else: more steps extend it; the mesh is
# where it runs, not what it computes.
RESUMABLE_FIELDS = ("train.num_steps", "mesh.shape")
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
    old = _identity(with_defaults(saved).to_dict())
    new = _identity(current)
    differing = [
        f"{k} ({old.get(k)!r} -> {new.get(k)!r})"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]
    if differing:
        raise UserError(
            f"{workdir} holds a run of another config; differing fields: "
            f"{', '.join(differing)}. Use a new --workdir, or the same config "
            "(only train.num_steps may change, to extend a run)"
        )


def recorded_data_sha256(workdir: str | os.PathLike) -> str | None:
    """The `content_sha256` of the data the run in `workdir` was trained on, from its
    run_info.json; None for a workdir that recorded none."""
    path = Path(workdir) / workdir_lib.RUN_INFO_FILE
    try:
        return json.loads(path.read_text())["data"]["content_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


class Checkpointer:
    """One Orbax `CheckpointManager`; use as a context manager so pending async saves
    are waited for on every exit path (Orbax drops a save the process exits during)."""

    def __init__(self, workdir: str | os.PathLike, keep_steps=(), *, read_only=False):
        """`read_only` opens existing checkpoints for reading: nothing is created or
        cleaned up (and no Orbax read-only warnings)."""
        ocp = startup.orbax()
        managers = ocp.checkpoint_managers
        policy = managers.AnyPreservationPolicy(
            [managers.LatestN(1), managers.CustomSteps(list(keep_steps))]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else policy,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        self._args = ocp.args
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=ITEMS
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, metadata: dict) -> None:
        # Host copies first: the device buffers are donated to the next chunk while
        # Orbax may still be writing in the background.
        params, opt_state = mesh.to_host((state.params, state.opt_state))
        # Likewise the metadata, which Orbax serialises later: the caller goes on
        # appending to the history it holds (a resume would replay those periods).
        metadata = json.loads(json.dumps(metadata))
        self._manager.save(
            step,
            args=self._args.Composite(
                params=self._args.StandardSave(params),
                opt_state=self._args.StandardSave(opt_state),
                metadata=self._args.JsonSave(metadata),
            ),
        )

    def restore(self, step: int, abstract_state) -> tuple[Any, Any, dict]:
        """(params, opt_state, metadata) at `step`, shaped like `abstract_state`."""
        restored = self._manager.restore(
            step,
            args=self._args.Composite(
                params=self._args.StandardRestore(abstract_state.params),
                opt_state=self._args.StandardRestore(abstract_state.opt_state),
                metadata=self._args.JsonRestore(),
            ),
        )
        return restored.params, restored.opt_state, restored.metadata

    def restore_params(self, step: int, abstract_params):
        restored = self._manager.restore(
            step,
            args=self._args.Composite(
                params=self._args.StandardRestore(abstract_params)
            ),
        )
        return restored.params

    def restore_metadata(self, step: int) -> dict:
        restored = self._manager.restore(
            step, args=self._args.Composite(metadata=self._args.JsonRestore())
        )
        return restored.metadata

    def wait_until_finished(self) -> None:
        """Returns once every save so far is complete on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def with_defaults(saved: dict) -> ConfigDict:
    """A saved config dict filled onto today's defaults, so a workdir from before a
    field existed still reads (the field takes its default)."""
    flat = flat_config(saved)
    config = config_schema.default_config()
    for name, default in config_schema.leaves(config_schema.default_config()):
        if name in flat:
            value = flat[name]
            value = tuple(value) if isinstance(default, tuple) else value
            config_schema.set_field(config, name, value)
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
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{workdir}: no {CONFIG_FILE}; is it a mnist_jax workdir?")
    return with_defaults(json.loads(path.read_text()))


def available_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps with a complete checkpoint in `workdir` (empty if none)."""
    if not (Path(workdir) / CHECKPOINT_DIR).is_dir():
        return []
    with Checkpointer(workdir, read_only=True) as checkpointer:
        return checkpointer.all_steps()


def check_step(
    workdir: str | os.PathLike, step: int | None, steps: list[int] | None = None
) -> int:
    """`step`, or the latest when None; a one-line error names the steps that exist
    (`steps`, when the caller has listed them already)."""
    steps = available_steps(workdir) if steps is None else steps
    if not steps:
        raise UserError(f"{workdir}: no checkpoints (run mnist_jax.main on it first)")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise UserError(
            f"{workdir}: no checkpoint at step {step}; available: "
            f"{', '.join(map(str, steps))}"
        )
    return step


def abstract_model(config):
    return nnx.eval_shape(lambda: models.make_model(config.model, config.seed))


def restore_model(workdir: str | os.PathLike, step: int | None = None) -> nnx.Module:
    """The Flax model saved at `step` (default: the latest), ready to call on images
    of shape (N, 784) scaled to [0, 1]; its config is read from the workdir."""
    step = check_step(workdir, step)
    graphdef, abstract_params = nnx.split(abstract_model(read_config(workdir)))
    with Checkpointer(workdir, read_only=True) as checkpointer:
        params = checkpointer.restore_params(step, abstract_params)
    return nnx.merge(graphdef, params)
