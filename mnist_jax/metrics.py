"""Classification metrics as pure jnp functions, so they fuse into the evaluation call.

Log loss is computed on the predicted probabilities of the true class (as sklearn's
`log_loss`). The notebook passed one-hot *predictions* to `log_loss`, which measures
error rate in disguise, not calibration; we do not repeat that.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 10


def example_log_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per example: the negative log-probability of the true class."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]


def log_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean negative log-probability of the true class."""
    return jnp.mean(example_log_loss(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


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
    first call would compile for ~0.15 s)."""
    xp = np if isinstance(counts, np.ndarray) else jnp
    totals = xp.sum(counts, axis=1, keepdims=True)
    return counts / xp.maximum(totals, 1)
