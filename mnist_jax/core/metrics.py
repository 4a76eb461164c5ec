"""Classification metrics, defined once: every writer and reader (`metrics.jsonl`,
`results.json`, TensorBoard, the log line, sweep tables, comparisons, figures) iterates
over `METRICS`, so a new metric is one `register` call here.

Each is a per-row function of (logits, labels), pure jnp so it fuses into the compiled
evaluation, and a reduction of a split's rows to one number. Log loss is computed on
the predicted probabilities of the true class (as sklearn's `log_loss`); the notebook
passed one-hot *predictions* to `log_loss`, which measured error rate in disguise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.data.readers import NUM_CLASSES

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    per_row: Callable[[jax.Array, jax.Array], jax.Array]  # (logits, labels) -> (N,)
    higher_is_better: bool
    reduce: Callable[[jax.Array], jax.Array] = jnp.mean  # a split's rows -> scalar
    curve: bool = False  # the run draws `{name}.png`, train and val per period


METRICS: dict[str, Metric] = {}
# Ranks runs and sweep settings (ties broken by the other metrics in order).
PRIMARY = "accuracy"


def register(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def example_log_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per example: the negative log-probability of the true class."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]


def example_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


register(Metric("accuracy", example_correct, higher_is_better=True))
register(Metric("log_loss", example_log_loss, higher_is_better=False, curve=True))


def key(split: str, name: str) -> str:
    """`val/accuracy`: how a metric of a split is named in every file."""
    return f"{split}/{name}"


def keys(*splits: str) -> list[str]:
    """Every metric's key for each of `splits`, split-major."""
    return [key(split, name) for split in splits for name in METRICS]


def ranking(split: str = "val") -> list[tuple[str, bool]]:
    """(key, ascending) to sort runs best first: the primary metric, then the rest."""
    names = [PRIMARY, *(n for n in METRICS if n != PRIMARY)]
    return [(key(split, n), not METRICS[n].higher_is_better) for n in names]


def row_values(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Every metric's per-row values: {name: (N,)}."""
    return {name: m.per_row(logits, labels) for name, m in METRICS.items()}


def reduce(split: str, values: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """{`split/name`: scalar} from `row_values`' outputs over one split's rows."""
    return {key(split, n): METRICS[n].reduce(v) for n, v in values.items()}


def evaluate(logits: jax.Array, labels: jax.Array, split: str) -> dict:
    """Every metric of one split in one call: {`split/name`: scalar}."""
    return reduce(split, row_values(logits, labels))


def log_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean negative log-probability of the true class."""
    return jnp.mean(example_log_loss(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(example_correct(logits, labels))


def confusion_matrix(
    labels: jax.Array, predictions: jax.Array, num_classes: int = NUM_CLASSES
) -> jax.Array:
    """Counts: rows are true labels, columns predictions (sklearn's layout)."""
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    pred = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)
    return true.T @ pred


def normalize_rows(counts: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """Each row divided by its total: the share of each true digit predicted as each label.
    A NumPy array stays on the host (a figure's matrix needs no device program, whose
    first call would compile)."""
    xp = np if isinstance(counts, np.ndarray) else jnp
    totals = xp.sum(counts, axis=1, keepdims=True)
    return counts / xp.maximum(totals, 1)
