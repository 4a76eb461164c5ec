"""How alike two checkpoints are: in their representations (linear CKA, Kornblith et
al. 2019) and in their predictions (per-class accuracy, churn)."""

from __future__ import annotations

import numpy as np

from mnist_jax.data import NUM_CLASSES


def representations(model, x) -> dict[str, np.ndarray]:
    """{layer name: (N, units)}: the model's own `representations(x)` (the MLP's
    hidden layers and logits), else its logits, the one representation every model
    has."""
    own = getattr(model, "representations", None)
    layers = own(x) if own is not None else {"logits": model(x)}
    return {name: np.asarray(a) for name, a in layers.items()}


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same N rows, (N, p) and (N, q):
    1 for representations equal up to a rotation and an isotropic scaling, near 0 for
    unrelated ones. Computed from the features' cross-products (p x q), never the
    N x N Gram matrices."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norms = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norms) if norms > 0 else float("nan")


def cka_matrix(layers: list[np.ndarray]) -> np.ndarray:
    """(n, n): linear CKA between every pair of n representations of the same rows."""
    n = len(layers)
    matrix = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i, j] = matrix[j, i] = linear_cka(layers[i], layers[j])
    return matrix


def per_class_accuracy(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """(num_classes,): the share of each digit's rows predicted right (NaN for a digit
    with no rows)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    right = np.bincount(labels[labels == predictions], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, right / counts, np.nan)


def churn(predictions_a: np.ndarray, predictions_b: np.ndarray) -> float:
    """The share of rows whose predicted class differs between two checkpoints."""
    return float(np.mean(np.asarray(predictions_a) != np.asarray(predictions_b)))
