"""Hyper-parameter sweeps: the whole grid from one command, members trained together.

`python -m mnist_jax.sweep --config=configs/sweep_mlp.py --workdir=W`

A sweep config is an ordinary config plus a `sweep` group naming axes as tuples, e.g.
`config.sweep.optim.learning_rate = (0.01, 0.03, 0.1)` and `config.sweep.seed = (0, 1)`;
the grid is their product. Members that differ only in seed, learning rate and clip norm
share array shapes and run as one compiled program, `jax.vmap` over the same pure
functions a single run uses; other axes (batch size, width, dropout, steps, loss
reduction) split the grid into groups that run one after another. `--axis=NAME=VALUES`
sweeps any field from the command line.

Each member writes a single run's files into `W/members/<index>/` (`sweep_members`),
checkpoints included, so a sweep is locked, stopped by SIGINT/SIGTERM after a chunk,
and continued by the same command after any stop, bitwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

import jax
from ml_collections import ConfigDict

from mnist_jax import data
from mnist_jax.config import parts
from mnist_jax.core import metrics
from mnist_jax.errors import UserError
from mnist_jax.platform import mesh as mesh_lib
from mnist_jax.run import checkpoints, identity, interrupts, writers
from mnist_jax.run import workdir as workdir_lib
from mnist_jax.sweep import grid, groups
from mnist_jax.sweep import report as sweep_report

# By name: run as `python -m mnist_jax.sweep`, `__name__` is "__main__", whose lines
# would miss the "mnist_jax" logger that writes train.log.
log = logging.getLogger("mnist_jax.sweep")

RESULT_KEYS = tuple(metrics.keys("val", "test"))


def run_sweep(
    config: ConfigDict, workdir: str | os.PathLike, *, save: bool = True
) -> list[dict]:
    """Trains every member of the grid into `workdir`: a folder per member
    (`sweep_members`), then the sweep's tables and figures. A workdir holding this
    sweep is resumed: finished groups are read back, others continue from their
    members' checkpoints. `save=False` skips the checkpoints (to measure their cost)."""
    start = time.perf_counter()
    members = grid.expand(config)
    base = members[0][1]
    source = data.resolve(base.data)
    host = data.load(base.data, source)
    device_mesh = mesh_lib.make_sweep_mesh(base.mesh.shape)
    for _, member_config in members:
        mesh_lib.check_batch(device_mesh, member_config.train.batch_size)
    workdir = workdir_lib.prepare(workdir)
    chief = mesh_lib.is_chief()  # process 0 writes; all take part in checkpoints
    with contextlib.ExitStack() as stack:
        stack.enter_context(workdir_lib.lock(workdir))  # every process agrees
        check_workdir(workdir, config)
        identity.check_data(
            workdir,
            host,
            "point --config.data.path at the sweep's data, or use a new --workdir",
        )
        dataset = data.to_device(host, mesh_lib.replicated(device_mesh))
        run_info = {
            "data": host.fingerprint(),
            **workdir_lib.environment(),
            "mesh": mesh_lib.describe(device_mesh),
            "sweep_id": sweep_id(workdir),
            parts.RUN_INFO_KEY: {
                part: file
                for _, member in members
                for part, file in parts.origins(member, source[0]).items()
            },
        }
        if chief:
            stack.enter_context(workdir_lib.log_file(workdir))
            writers.write_json(workdir / workdir_lib.CONFIG_FILE, config.to_dict())
            writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
        received = stack.enter_context(interrupts.deferred())
        run = groups.SweepRun(
            workdir=workdir,
            host=host,
            dataset=dataset,
            device_mesh=device_mesh,
            source=source,
            run_info=run_info,
            received=received,
            hparams=[h for h, _ in members],
            sweep_id=run_info["sweep_id"],
            save=save,
        )
        rows = train_groups(members, run)

        report = sweep_report.write(
            workdir,
            config,
            list(grid.axes(config)),
            members,
            rows,
            dict(device_mesh.shape),
        )
        run_info |= {
            "num_members": len(members),
            "num_groups": len({grid.group_key(c) for _, c in members}),
            "wall_seconds": time.perf_counter() - start,
        }
        if chief:
            writers.write_json(workdir / workdir_lib.RUN_INFO_FILE, run_info)
        log_report(report)
    return rows


def sweep_id(workdir: Path) -> str:
    """The sweep's identity, recorded in its run_info.json when it first starts:
    moved or renamed, a sweep keeps it; a new sweep in the same folder name gets
    another. Process 0 reads or makes it and tells the others, so every process has
    the same one, or the same one-line error."""
    answer = ""
    if jax.process_index() == 0:
        try:
            answer = "id:" + _recorded_sweep_id(workdir)
        except UserError as e:
            answer = f"error:{e}"
    kind, _, value = workdir_lib.from_process_zero(answer).partition(":")
    if kind == "error":
        raise UserError(value)
    return value


def _recorded_sweep_id(workdir: Path) -> str:
    path = workdir / workdir_lib.RUN_INFO_FILE
    recorded = writers.read_json(path).get("sweep_id") if path.is_file() else None
    if recorded is None:  # a new sweep, or one from before sweeps had an id
        return uuid.uuid4().hex
    if not (isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{32}", recorded)):
        raise UserError(f"{path}: sweep_id={recorded!r} is not a sweep's id")
    return recorded


def train_groups(
    members: list[tuple[dict, ConfigDict]], run: groups.SweepRun
) -> list[dict]:
    """Each group in turn; one sweep.csv row per member (its hyper-parameters, every
    result key, the step it diverged at if it did, and its history)."""
    by_key: dict[str, list[int]] = {}
    for i, (_, member_config) in enumerate(members):
        by_key.setdefault(grid.group_key(member_config), []).append(i)
    rows: list[dict] = [{} for _ in members]
    for n, indices in enumerate(by_key.values()):
        group_start = time.perf_counter()
        results = groups.run_group(
            [members[i][1] for i in indices],
            indices,
            run,
            # pandas and matplotlib import while the first group compiles.
            while_compiling=sweep_report.import_libraries if n == 0 else None,
        )
        for i, result in zip(indices, results, strict=True):
            rows[i] = {
                "member": i,
                **members[i][0],
                **{k: result[k] for k in RESULT_KEYS},
                "history": result["history"],
            }
            if "diverged_at_step" in result:
                rows[i]["diverged_at_step"] = result["diverged_at_step"]
        log.info(
            "Group %d/%d: %d members in %.1fs.",
            n + 1,
            len(by_key),
            len(indices),
            time.perf_counter() - group_start,
        )
        if n + 1 < len(by_key) and interrupts.agree(run.received):
            raise groups.interrupted(run, f"after group {n + 1}/{len(by_key)}")
    return rows


# A sweep may be resumed on another layout (where it runs, not what it computes); data
# is identified by content (`identity.check_data`), not by where it was read.
RESUMABLE_FIELDS = (*identity.LAYOUT_FIELDS, *identity.DATA_LOCATION_FIELDS)


def sweep_identity(saved: dict) -> dict:
    """The flat fields (axes as `sweep.NAME`) that make two sweep configs the same
    sweep; the base is filled onto today's defaults, as a single run's is."""
    base = identity.with_defaults({k: v for k, v in saved.items() if k != "sweep"})
    flat = identity.flat_config(base.to_dict())
    flat |= identity.flat_config(saved.get("sweep") or {}, "sweep.")
    return {k: v for k, v in flat.items() if k not in RESUMABLE_FIELDS}


def check_workdir(workdir: Path, config: ConfigDict) -> None:
    """Refuses, in one line, a folder holding a single run or a sweep of another
    config (naming the differing fields); a folder of this sweep is resumed."""
    path = workdir / workdir_lib.CONFIG_FILE
    single = (workdir / checkpoints.CHECKPOINT_DIR).is_dir()
    saved = writers.read_json(path) if path.is_file() else None
    if single or (saved is not None and "sweep" not in saved):
        raise UserError(
            f"{workdir} holds a single run, not a sweep; use a new --workdir"
        )
    if saved is None:
        return
    old, new = sweep_identity(saved), sweep_identity(config.to_dict())
    differing = identity.changes(old, new)
    if differing:
        raise UserError(
            f"{workdir} holds a sweep of another config; differing fields: "
            f"{', '.join(differing)}. Use a new --workdir, or the same config to resume"
        )


def log_report(report: sweep_report.Written) -> None:
    """The console's last lines: the settings table, the best setting, the files."""
    log.info("Settings (mean ± std over seeds):\n%s", report.settings_markdown)
    log.info("Best setting: %s", report.best_line)
    log.info("Wrote %s", ", ".join(str(p) for p in report.paths))
