"""Questions asked of a finished run's checkpoints: how good was the model at step N,
and what did its first layer look like, in numbers.

`RunView` rebuilds a run from its workdir (config, data, split) so that checkpoints can
be scored on exactly the validation and test rows the run used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mnist_jax import data, plots
from mnist_jax.core import metrics, programs, steps
from mnist_jax.errors import DataError, UserError
from mnist_jax.platform import startup
from mnist_jax.run import checkpoints, identity

DEAD_UNIT_NOTE = "never active (ReLU output 0) on any validation image"
IGNORED_UNIT_FRACTION = 0.1  # outgoing weight norm below this share of the median
NOISE_SMOOTHNESS = 0.1  # below this neighbour correlation a weight image is still noise


@functools.cache
def _scoring():
    """(logits, evaluate), compiled once per program (hashable) rather than per run or
    checkpoint read, with the options training used (the same sums as metrics.jsonl)."""
    return (
        startup.jit(steps.Program.logits, static_argnums=0),
        startup.jit(metrics.evaluate, static_argnums=2),
    )


@dataclasses.dataclass
class RunView:
    workdir: Path
    config: object
    host: data.HostData
    dataset: data.Dataset
    program: steps.Program
    member: steps.Member
    initial_params: nnx.State
    steps: list[int]
    # shared with other members' views (`Shared`), so that a block is read once
    block_reads: checkpoints.BlockReads | None = None

    def params_at(self, step: int) -> nnx.State:
        checkpoints.check_step(self.workdir, step, self.steps)
        abstract = jax.eval_shape(lambda: self.initial_params)  # no model to trace
        with checkpoints.Checkpointer(
            self.workdir, read_only=True, block_reads=self.block_reads
        ) as checkpointer:
            try:
                return checkpointer.restore_params(step, abstract)
            except UserError:
                raise
            except Exception as e:  # Orbax raises many types for a damaged folder
                first_line = (str(e).strip().splitlines() or [""])[0]
                raise UserError(
                    f"{checkpointer.directory / str(step)}: checkpoint cannot be read "
                    f"({type(e).__name__}: {first_line[:200]})"
                ) from e

    def split(self, name: str) -> tuple[jax.Array, jax.Array]:
        """(images, labels) of 'val' or 'test', as the run saw them."""
        if name == "val":
            idx = self.member.val_idx
            return self.dataset.pool_x[idx], self.dataset.pool_y[idx]
        if name == "test":
            return self.dataset.test_x, self.dataset.test_y
        raise UserError(f"split {name!r} is not one of val, test")

    def predict(self, params, split: str) -> dict[str, np.ndarray]:
        """Logits, labels and predicted classes of a split's rows, and every metric
        (`accuracy`, `log_loss`, ...) over them."""
        x, y = self.split(split)
        logits_of, evaluate = _scoring()
        logits = logits_of(self.program, params, x)
        values = evaluate(logits, y, split)
        return {
            "logits": np.asarray(logits),
            "labels": np.asarray(y),
            "predictions": np.asarray(jnp.argmax(logits, axis=-1)),
            **{k.split("/", 1)[1]: float(v) for k, v in values.items()},
        }

    def classes(self, params, x) -> np.ndarray:
        """The predicted class of each of the images `x` (any rows, not only a
        split's: another run's validation images, say)."""
        logits_of, _ = _scoring()
        return np.asarray(jnp.argmax(logits_of(self.program, params, x), axis=-1))

    def scores(self, params, split: str) -> dict[str, float]:
        """Every metric of a split, keyed as in metrics.jsonl (`val/accuracy`)."""
        predicted = self.predict(params, split)
        return {metrics.key(split, n): predicted[n] for n in metrics.METRICS}

    def model(self, params) -> nnx.Module:
        return nnx.merge(self.program.graphdef, params)


@dataclasses.dataclass
class Shared:
    """What runs analysed together (a sweep's members) share: each data config's host
    data and device copy, read once, and the reads of their block checkpoints."""

    datasets: dict[str, tuple[data.HostData, data.Dataset]] = dataclasses.field(
        default_factory=dict
    )
    block_reads: checkpoints.BlockReads = dataclasses.field(
        default_factory=checkpoints.BlockReads
    )


def load_run(
    workdir: str | os.PathLike,
    data_path: str | os.PathLike | None = None,
    *,
    shared: Shared | None = None,
) -> RunView:
    """Everything needed to score a workdir's checkpoints; one line if it has none.

    The data is read from where config.json says, or from `data_path` (a folder
    holding the run's data in either format, for data moved since training); either
    way it must be the examples the run recorded in run_info.json (one line if not).
    `shared` (kept by the caller between calls) lets runs with the same data config
    (its JSON) read the data once, each still checked against its own fingerprint, and
    a sweep's members read each block checkpoint once.
    """
    workdir = Path(workdir)
    config = identity.read_config(workdir)
    saved = checkpoints.available_steps(workdir)
    checkpoints.check_step(workdir, None, saved)
    if data_path is not None:
        config.data.source, config.data.path = "auto", str(data_path)
    remedy = "pass data_path (--data_path=DIR), a folder with the run's data"
    key = json.dumps(config.data.to_dict(), sort_keys=True)
    host, dataset = shared.datasets.get(key, (None, None)) if shared else (None, None)
    if host is None:
        try:
            host = data.load(config.data)
        except DataError as e:
            raise DataError(f"{e}; {remedy}") from e
    identity.check_data(workdir, host, remedy)
    program, state, member = programs.init_run(config, host)
    if dataset is None:
        dataset = data.to_device(host)
        if shared is not None:
            shared.datasets[key] = host, dataset
    # Only a caller's `Shared` keeps block reads: a view of its own would hold every
    # step it read of a whole block for as long as it lives.
    block_reads = shared.block_reads if shared else None
    view = (workdir, config, host, dataset, program, member, state.params, saved)
    return RunView(*view, block_reads=block_reads)


def saved_axes(sweep: dict, prefix: str = ""):
    """The dotted names of a saved sweep group's axes."""
    for key, value in sweep.items():
        if isinstance(value, dict):
            yield from saved_axes(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def first_layer_kernel(model) -> np.ndarray | None:
    """(inputs, units): the model's first layer (`first_layer` in models.py), or None
    for a model that does not show one."""
    first_layer = getattr(model, "first_layer", None)
    return None if first_layer is None else np.asarray(first_layer())


def smoothness(kernel: np.ndarray) -> np.ndarray:
    """Per unit, the correlation of each weight with its right and lower neighbours in
    its square image: ~0 for pixel noise, towards 1 for smooth stroke-like templates."""
    side = plots.image_side(kernel)
    images = kernel.T.reshape(-1, side, side)
    pairs = [
        (images[:, :, :-1], images[:, :, 1:]),
        (images[:, :-1, :], images[:, 1:, :]),
    ]
    a = np.concatenate([p[0].reshape(len(images), -1) for p in pairs], axis=1)
    b = np.concatenate([p[1].reshape(len(images), -1) for p in pairs], axis=1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    denom = np.sqrt((a**2).sum(1) * (b**2).sum(1))
    return np.where(denom > 0, (a * b).sum(1) / np.where(denom > 0, denom, 1), 0.0)


def unit_table(run: RunView, params_by_step: dict[int, nnx.State]) -> list[dict]:
    """One row per checkpoint: every metric on validation and, for a model that shows
    its first layer, how far that layer moved, how smooth its units' images are, and
    how many units are dead (never active on a validation image, for a model that
    reports `first_layer_activity`) or ignored by the next layer."""
    initial = first_layer_kernel(run.model(run.initial_params))
    val_x, _ = run.split("val")
    rows, previous = [], initial
    for step, params in sorted(params_by_step.items()):
        model = run.model(params)
        row = {"step": step, **run.scores(params, "val")}
        kernel = first_layer_kernel(model)
        if kernel is not None:
            unit_smoothness = smoothness(kernel)
            row |= {
                "l2_from_init": float(np.linalg.norm(kernel - initial)),
                "l2_from_previous": float(np.linalg.norm(kernel - previous)),
                "smoothness_mean": float(unit_smoothness.mean()),
                "noise_units": float(np.mean(unit_smoothness < NOISE_SMOOTHNESS)),
                "dead_units": dead_units(model, val_x),
                "ignored_units": ignored_units(model),
            }
            previous = kernel
        rows.append(row)
    return rows


def dead_units(model, x) -> float:
    """Share of first-layer units never active (output 0) on any row of `x`; NaN for a
    model without `first_layer_activity`."""
    activity = getattr(model, "first_layer_activity", None)
    if activity is None:
        return float("nan")
    return float(np.mean(np.asarray(activity(x)).max(axis=0) <= 0.0))


def ignored_units(model) -> float:
    """Share of first-layer units whose outgoing weights are under a tenth of the median
    norm; NaN for a model without `first_layer_outgoing`."""
    outgoing = getattr(model, "first_layer_outgoing", None)
    if outgoing is None:
        return float("nan")
    norms = np.linalg.norm(np.asarray(outgoing()), axis=1)
    return float(np.mean(norms < IGNORED_UNIT_FRACTION * np.median(norms)))


def confused_pairs(
    labels: np.ndarray, predictions: np.ndarray, top: int = 5
) -> list[dict]:
    """The (true, predicted) digit pairs most often confused, with their counts."""
    counts = np.array(
        metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions))
    )
    np.fill_diagonal(counts, 0)
    order = np.argsort(counts, axis=None)[::-1][:top]
    pairs = []
    for flat in order:
        true, pred = np.unravel_index(flat, counts.shape)
        if counts[true, pred] == 0:
            break
        share = counts[true, pred] / max(int((labels == true).sum()), 1)
        pairs.append(
            {
                "true": int(true),
                "predicted": int(pred),
                "count": int(counts[true, pred]),
                "share_of_true": float(share),
            }
        )
    return pairs


def output_dir(workdir: str | os.PathLike, out: str | None) -> Path:
    """`--out`, else `WORKDIR/analysis`; created."""
    folder = Path(out) if out else Path(workdir) / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
