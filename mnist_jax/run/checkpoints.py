"""Orbax checkpoints under `WORKDIR/checkpoints`: chosen steps kept forever, plus a
rolling latest one for resumption; and the notebook-friendly way to read them back.

Params, optimizer state and metadata are separate items, so analysis restores the
params alone. Restores go into abstract targets (shapes only: `nnx.eval_shape` of the
model, or `jax.eval_shape` of a run's initial params).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import SingleDeviceSharding

from mnist_jax.core import programs
from mnist_jax.errors import UserError
from mnist_jax.platform import mesh, startup
from mnist_jax.run import identity, writers
from mnist_jax.run import workdir as workdir_lib

CHECKPOINT_DIR = "checkpoints"
LINKS_FILE = "checkpoint_links.json"  # a sweep member's block checkpoints (`link`)
ITEMS = ("params", "opt_state", "metadata")


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
        self.workdir = Path(workdir)
        self._block_reads = block_reads
        self._blocks: list[Checkpointer] = []
        self._linked: dict[int, tuple[Checkpointer, dict]] = {}
        self._own_fields: dict | None = None  # of config.json, once read
        for entry in read_links(workdir):  # later links win a step
            block_dir = _block_dir(workdir, entry)
            if block_dir is None:  # gone: its steps are missing (`missing_blocks`)
                continue
            block = Checkpointer(block_dir, read_only=True)
            self._blocks.append(block)
            for step in block.all_steps():
                self._linked[step] = (block, entry)

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
            block, entry = self._linked[step]
            saved = self._read_block(block, step, None, None, metadata=True)[2]
            slots = self._checked_slots(block, step, entry, saved)
            index = entry["index"]
            p = o = None
            if params is not None or opt_state is not None:
                stacked = [
                    None if a is None else _stacked(a, slots)
                    for a in (params, opt_state)
                ]
                p, o, _ = self._read_block(block, step, *stacked)
            return (
                None if p is None else _member(p, index, params),
                None if o is None else _member(o, index, opt_state),
                # A copy: the read may be kept (`BlockReads`) for other members.
                copy.deepcopy(saved["metadata"][index]) if metadata else None,
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

    def _read_block(
        self, block: Checkpointer, step: int, params, opt_state, *, metadata=False
    ):
        """A block checkpoint's items at `step` (`params` and `opt_state` abstract
        targets of stacked arrays, or None)."""

        def read():
            try:
                return block._restore(step, params, opt_state, metadata)
            except Exception as e:  # Orbax raises many types for a damaged folder
                first_line = (str(e).strip().splitlines() or [""])[0]
                raise UserError(
                    f"{self.workdir}: its checkpoint at step {step} in "
                    f"{block.directory.parent} cannot be read ({type(e).__name__}: "
                    f"{first_line})"
                ) from e

        if self._block_reads is None:  # no reads kept: a block may be large
            return read()
        asked = (step, params is not None, opt_state is not None, metadata)
        return self._block_reads.get(block.directory.resolve(), asked, read)

    def _checked_slots(self, block: Checkpointer, step: int, entry: dict, saved) -> int:
        """The number of slots `block` stores at `step` (its arrays' leading axis), once
        the slot `entry` names is shown to hold this folder's member: the member the link names, of the sweep
        it names, trained under this folder's config. A copied member, or one whose
        sweep was re-run in place, would otherwise read another member's weights."""
        block_dir = block.directory.parent
        where = f"{self.workdir}: its checkpoint at step {step} in {block_dir}"
        index = entry["index"]
        names, metas = (
            (saved.get("members"), saved.get("metadata"))
            if isinstance(saved, dict)
            else (None, None)
        )
        if not (
            isinstance(names, list)
            and isinstance(metas, list)
            and index < min(len(names), len(metas))
            and isinstance(metas[index], dict)
        ):
            raise UserError(f"{where} has no slot {index} (see {LINKS_FILE})")
        found = f"member {names[index]}"
        sweeps = (entry.get("sweep_id"), saved.get("sweep_id"))
        if None not in sweeps and sweeps[0] != sweeps[1]:
            found += " of another sweep"
        elif entry.get("member", names[index]) != names[index]:
            pass  # another member of this sweep: `found` says which
        elif not self._same_config(metas[index].get("config")):
            found += " of another config"
        else:
            slots = saved.get("slots", entry["members"])
            if not isinstance(slots, int) or slots < len(names):
                raise UserError(f"{where}: its slot count {slots!r} is not readable")
            return slots
        expected = entry.get("member", self.workdir.name)
        raise UserError(
            f"{where} holds {found}, not this folder's member {expected} (see "
            f"{LINKS_FILE}): its links or config.json were changed, or it was copied "
            "from a sweep since re-run in place. Keep a member with its own sweep's "
            "blocks/ folder, or retrain it"
        )

    def _same_config(self, saved_config) -> bool:
        if self._own_fields is None:
            path = self.workdir / workdir_lib.CONFIG_FILE
            own = writers.read_json(path) if path.is_file() else {}
            self._own_fields = own and identity.identity_fields(
                own, identity.RESUMABLE_FIELDS, path
            )
        if not self._own_fields:  # nothing recorded to compare with
            return True
        if not isinstance(saved_config, dict):
            return False
        return (
            identity.identity_fields(saved_config, identity.RESUMABLE_FIELDS)
            == self._own_fields
        )

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


LINK_FIELDS = {"relative": str, "absolute": str, "index": int, "members": int}


def link(
    workdir: str | os.PathLike,
    block_dir: str | os.PathLike,
    index: int,
    size: int,
    *,
    member: str,
    sweep_id: str,
):
    """Records in `workdir` (a sweep member's folder) that its checkpoints are slot
    `index` of the `size` in `block_dir`'s checkpoints, holding `member` of sweep
    `sweep_id` (checked on every read): a sweep saves a block of members in one Orbax
    checkpoint per step, since each save costs Orbax the same work whatever its
    size. The path is kept relative (the sweep may move) and absolute (the member
    folder may be copied out alone)."""
    workdir, block_dir = Path(workdir).absolute(), Path(block_dir).absolute()
    entry = {
        "relative": os.path.relpath(block_dir, workdir),
        "absolute": str(block_dir),
        "index": index,
        "members": size,
        "member": member,
        "sweep_id": sweep_id,
    }
    links = read_links(workdir)
    same = ("relative", "index", "members")
    if entry not in links:  # a link to the same slot says who holds it now
        kept = [e for e in links if any(e[k] != entry[k] for k in same)]
        writers.write_json(workdir / LINKS_FILE, kept + [entry])


def read_links(workdir: str | os.PathLike) -> list[dict]:
    """`LINKS_FILE`'s entries, each checked (a one-line `UserError` naming the file)."""
    path = Path(workdir) / LINKS_FILE
    if not path.is_file():
        return []
    links = writers.read_json(path, list)
    for number, entry in enumerate(links):
        problem = _link_problem(entry)
        if problem:
            raise UserError(f"{path}: entry {number}: {problem}")
    return links


def _link_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return "not a JSON object"
    for key, kind in LINK_FIELDS.items():
        value = entry.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key!r} is missing or not {kind.__name__}"
    if not 0 <= entry["index"] < entry["members"]:
        return f"index {entry['index']} is not one of the block's {entry['members']}"
    return None


def _block_dir(workdir: str | os.PathLike, entry: dict) -> Path | None:
    """The linked block's folder, by its relative then its absolute path; None when
    neither holds checkpoints."""
    for block_dir in (Path(workdir) / entry["relative"], Path(entry["absolute"])):
        if (block_dir / CHECKPOINT_DIR).is_dir():
            return block_dir
    return None


def missing_blocks(workdir: str | os.PathLike) -> list[str]:
    """The linked blocks (`LINKS_FILE`, as absolute paths) that are not there."""
    return [
        e["absolute"] for e in read_links(workdir) if _block_dir(workdir, e) is None
    ]


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
    if steps and (step is None or step in steps):
        return steps[-1] if step is None else step
    missing = missing_blocks(workdir)
    gone = (
        f"; the sweep checkpoints it links are not there ({', '.join(missing)}: "
        "see its checkpoint_links.json)"
        if missing
        else ""
    )
    if not steps:
        hint = gone or " (run mnist_jax.main on it first)"
        raise UserError(f"{workdir}: no checkpoints{hint}")
    raise UserError(
        f"{workdir}: no checkpoint at step {step}; available: "
        f"{', '.join(map(str, steps))}{gone}"
    )


def restore_model(workdir: str | os.PathLike, step: int | None = None) -> nnx.Module:
    """The Flax model saved at `step` (default: the latest), ready to call on images
    of shape (N, 784) scaled to [0, 1]; its config is read from the workdir."""
    step = check_step(workdir, step)
    graphdef, abstract_params = nnx.split(
        programs.abstract_model(identity.read_config(workdir))
    )
    with Checkpointer(workdir, read_only=True) as checkpointer:
        params = checkpointer.restore_params(step, abstract_params)
    return nnx.merge(graphdef, params)
