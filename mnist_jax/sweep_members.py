"""A sweep member's folder, `SWEEP/members/<index>/`, holds a single run's files
(config.json, run_info.json, metrics.jsonl, TensorBoard events, results.json and Orbax
checkpoints), so every reader of a run reads a member unchanged, and a member folder
resumes as a single run. results.json is written last: it marks a member finished."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from mnist_jax import checkpoints, metrics, steps, writers
from mnist_jax import workdir as workdir_lib

MEMBERS_DIR = "members"


def folder(workdir: str | os.PathLike, index: int) -> Path:
    """`SWEEP/members/<index>/`: member `index` of the grid (sweep.csv's `member`)."""
    return Path(workdir) / MEMBERS_DIR / str(index)


def write_start(member_dir: Path, recorded_config: dict, run_info: dict) -> None:
    """config.json and run_info.json, before the member's first checkpoint."""
    member_dir.mkdir(parents=True, exist_ok=True)
    writers.write_json(member_dir / workdir_lib.CONFIG_FILE, recorded_config)
    writers.write_json(member_dir / workdir_lib.RUN_INFO_FILE, run_info)


def metadata(config, step: int, history: list[dict], train_seconds: float) -> dict:
    """A checkpoint's metadata item, as a single run writes it (`loop.train_chunks`)."""
    config_dict = config.to_dict()
    return {
        "step": step,
        "history": history,
        "config": config_dict,
        "config_hash": checkpoints.config_hash(config_dict),
        "train_seconds": train_seconds,
    }


def member_state(state: steps.TrainState, i: int) -> steps.TrainState:
    """Member `i` of a block's host state (leading members axis; one shared step)."""
    return steps.TrainState(
        state.step,
        jax.tree.map(lambda x: x[i], state.params),
        jax.tree.map(lambda x: x[i], state.opt_state),
    )


def finished(member_dir: Path) -> dict | None:
    """A finished member's result row (its results.json and history), else None."""
    path = member_dir / workdir_lib.RESULTS_FILE
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return {**results, "history": writers.read_metrics(member_dir)}


def write_finish(
    member_dir: Path, hparams: dict, results: dict, history: list[dict]
) -> None:
    """metrics.jsonl, TensorBoard events (scalars per period, hparams) and, last,
    results.json."""
    writers.rewrite_metrics(member_dir, history)
    for old in member_dir.glob("events.out.tfevents.*"):  # a rerun after a kill
        old.unlink()
    from tensorboardX import SummaryWriter

    events = SummaryWriter(logdir=str(member_dir))
    for row in history:
        for name, value in row.items():
            if name != "step":
                events.add_scalar(name, float(value), row["step"])
    keys = metrics.keys("val", "test")
    scores = {f"hparam/{k}": results[k] for k in keys}
    events.add_hparams(
        {k: _hparam(v) for k, v in hparams.items()}, scores, name=".", global_step=0
    )
    events.close()
    writers.write_json(member_dir / workdir_lib.RESULTS_FILE, results)


def _hparam(value):
    """TensorBoard's hparams take numbers, strings and bools: tuples become strings."""
    return value if isinstance(value, int | float | str | bool) else str(value)


def resume_step(member_dirs: Sequence[Path]) -> int | None:
    """The latest step at which every one of `member_dirs` has a checkpoint, or None."""
    common = None
    for member_dir in member_dirs:
        saved = set(checkpoints.available_steps(member_dir))
        common = saved if common is None else common & saved
    return max(common) if common else None


def restore(
    member_dirs: Sequence[Path], step: int, abstract: steps.TrainState
) -> tuple[steps.TrainState, list[dict]]:
    """The members' states at `step`, stacked on a leading axis (on the host), and each
    member's checkpoint metadata."""
    states, metadatas = [], []
    for member_dir in member_dirs:
        with checkpoints.Checkpointer(member_dir, read_only=True) as checkpointer:
            params, opt_state, meta = checkpointer.restore(step, abstract)
        states.append((params, opt_state))
        metadatas.append(meta)
    params, opt_state = jax.tree.map(
        lambda *xs: np.stack([np.asarray(x) for x in xs]), *states
    )
    return steps.TrainState(np.int32(step), params, opt_state), metadatas
