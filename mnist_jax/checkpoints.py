"""Orbax checkpoints under `WORKDIR/checkpoints`: chosen steps kept forever, plus a
rolling latest one for resumption; and the notebook-friendly way to read them back.

Params, optimizer state and metadata are separate items, so analysis restores the
params alone. Restores go into abstract targets (shapes only: `nnx.eval_shape` of the
model, or `jax.eval_shape` of a run's initial params).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import SingleDeviceSharding
from ml_collections import ConfigDict

from mnist_jax import config_schema, mesh, models, startup, writers
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
LINKS_FILE = "checkpoint_links.json"  # a sweep member's block checkpoints (`link`)
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


class BlockReads:
    """Block checkpoints already read, kept for the block's other members: analysing a
    sweep's members in order then reads each block's step once, not once per member (a
    block holds up to 16). Keeps every read of the `blocks` latest blocks, each a
    block's stacked arrays on the device."""

    def __init__(self, blocks: int = 2):
        self._reads: dict[Path, dict[tuple, tuple]] = {}
        self._blocks = blocks

    def get(self, block_dir: Path, key: tuple, read: Callable[[], tuple]) -> tuple:
        if key not in self._reads.get(block_dir, {}):
            restored = read()  # first: a failed read drops nothing
            self._reads.setdefault(block_dir, {})[key] = restored
            while len(self._reads) > self._blocks:
                del self._reads[next(iter(self._reads))]  # the oldest block
        return self._reads[block_dir][key]


class Checkpointer:
    """One Orbax `CheckpointManager`; use as a context manager so pending async saves
    are waited for on every exit path (Orbax drops a save the process exits during).

    A sweep member's folder holds no checkpoints of its own: its `LINKS_FILE` names the
    block checkpoints (`link`) that hold it on a leading members axis, and the steps
    they hold read here as the folder's own, one member's slice. A single run that
    extends a member saves into the folder's own `checkpoints/`, which wins a step both
    hold."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        keep_steps=(),
        *,
        read_only=False,
        block_reads: BlockReads | None = None,
    ):
        """`read_only` opens existing checkpoints for reading: nothing is created or
        cleaned up (and no Orbax read-only warnings). `block_reads` shares reads of
        block checkpoints with other members' `Checkpointer`s."""
        ocp = startup.orbax()
        managers = ocp.checkpoint_managers
        policy = managers.AnyPreservationPolicy(
            [managers.LatestN(1), managers.CustomSteps(list(keep_steps))]
        )
        # A reader works alone: each process reads what it needs, when it needs it, so
        # no barrier with the other processes (whose readers may differ in number).
        alone = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()}
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else policy,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
            **({"multiprocessing_options": alone} if read_only else {}),
        )
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        self._args = ocp.args
        self._manager = None
        if not read_only or self.directory.is_dir():
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=ITEMS
            )
        self._block_reads = block_reads
        self._blocks: list[Checkpointer] = []
        self._linked: dict[int, tuple[Checkpointer, int, int]] = {}
        for entry in read_links(workdir):  # later links win a step
            block = Checkpointer(_block_dir(workdir, entry), read_only=True)
            self._blocks.append(block)
            for step in block.all_steps():
                self._linked[step] = (block, entry["index"], entry["members"])

    def _own_steps(self) -> list[int]:
        return list(self._manager.all_steps()) if self._manager else []

    def all_steps(self) -> list[int]:
        return sorted(set(self._own_steps()) | self._linked.keys())

    def latest_step(self) -> int | None:
        return max(self.all_steps(), default=None)

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

    def _restore(self, step: int, params=None, opt_state=None, metadata=False):
        """(params, opt_state, metadata) at `step`; None for an item not asked for
        (`params` and `opt_state` are abstract targets)."""
        if step not in self._own_steps() and step in self._linked:
            block, index, size = self._linked[step]
            stacked = [
                None if a is None else _stacked(a, size) for a in (params, opt_state)
            ]

            def read():
                return block._restore(step, *stacked, metadata)

            if self._block_reads is None:  # no reads kept: a block may be large
                p, o, m = read()
            else:
                asked = (step, params is not None, opt_state is not None, metadata)
                p, o, m = self._block_reads.get(block.directory.resolve(), asked, read)
            return (
                None if p is None else _member(p, index, params),
                None if o is None else _member(o, index, opt_state),
                None if m is None else m["metadata"][index],
            )
        args = {}
        if params is not None:
            args["params"] = self._args.StandardRestore(params)
        if opt_state is not None:
            args["opt_state"] = self._args.StandardRestore(opt_state)
        if metadata:
            args["metadata"] = self._args.JsonRestore()
        if self._manager is None:
            raise FileNotFoundError(f"no checkpoint at step {step} in {self.directory}")
        restored = self._manager.restore(step, args=self._args.Composite(**args))
        return tuple(restored.get(name) for name in ITEMS)

    def restore(self, step: int, abstract_state) -> tuple[Any, Any, dict]:
        """(params, opt_state, metadata) at `step`, shaped like `abstract_state`."""
        return self._restore(
            step, abstract_state.params, abstract_state.opt_state, metadata=True
        )

    def restore_params(self, step: int, abstract_params):
        return self._restore(step, params=abstract_params)[0]

    def restore_metadata(self, step: int) -> dict:
        return self._restore(step, metadata=True)[2]

    def wait_until_finished(self) -> None:
        """Returns once every save so far is complete on disk."""
        if self._manager:
            self._manager.wait_until_finished()

    def close(self) -> None:
        if self._manager:
            self._manager.wait_until_finished()
            self._manager.close()
        for block in self._blocks:
            block.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def link(
    workdir: str | os.PathLike, block_dir: str | os.PathLike, index: int, size: int
):
    """Records in `workdir` (a sweep member's folder) that its checkpoints are member
    `index` of the `size` members in `block_dir`'s checkpoints: a sweep saves a block
    of members in one Orbax checkpoint per step, since each save costs ~50 ms of
    Orbax's own work whatever its size. The path is kept relative (the sweep may move)
    and absolute (the member folder may be copied out alone)."""
    workdir, block_dir = Path(workdir).absolute(), Path(block_dir).absolute()
    entry = {
        "relative": os.path.relpath(block_dir, workdir),
        "absolute": str(block_dir),
        "index": index,
        "members": size,
    }
    links = read_links(workdir)
    same = ("relative", "index", "members")
    if not any(all(e[k] == entry[k] for k in same) for e in links):
        writers.write_json(workdir / LINKS_FILE, links + [entry])


def read_links(workdir: str | os.PathLike) -> list[dict]:
    path = Path(workdir) / LINKS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _block_dir(workdir: str | os.PathLike, entry: dict) -> Path:
    for block_dir in (Path(workdir) / entry["relative"], Path(entry["absolute"])):
        if (block_dir / CHECKPOINT_DIR).is_dir():
            return block_dir
    raise UserError(
        f"{workdir}: its checkpoints are in its sweep's {entry['relative']} (see "
        f"{LINKS_FILE}), which is not there; keep the member folder in its sweep, or "
        "copy the sweep's blocks/ folder with it"
    )


def _stacked(abstract, size: int):
    """`abstract` with a leading axis of `size` members, on this process's first device."""
    device = SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((size, *a.shape), a.dtype, sharding=device),
        abstract,
    )


def _member(stacked, index: int, abstract):
    """Member `index` of restored `stacked` arrays, placed as `abstract` says."""

    def place(x, a):
        host = np.asarray(x[index])
        sharding = getattr(a, "sharding", None)
        if sharding is None:
            return jax.device_put(host)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    leaves = [
        place(x, a)
        for x, a in zip(
            jax.tree.leaves(stacked), jax.tree.leaves(abstract), strict=True
        )
    ]
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


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
