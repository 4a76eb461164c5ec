"""The notebook's figures, drawn with matplotlib's object API (no pyplot global state)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mnist_jax import metrics


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Saves atomically, so an interrupted run never leaves half a PNG."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_log_loss(
    steps: Sequence[int], train: Sequence[float], val: Sequence[float]
) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(steps, train, marker="o", label="training")
    ax.plot(steps, val, marker="o", label="validation")
    ax.set(xlabel="step", ylabel="log loss", title="Log loss per period")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_confusion_matrix(
    normalized: np.ndarray, title: str = "Confusion matrix"
) -> Figure:
    """`normalized` rows sum to 1: row = true digit, column = predicted digit."""
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    image = ax.imshow(normalized, cmap="bone_r", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true digit")
    ticks = range(normalized.shape[0])
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xlabel="predicted label",
        ylabel="true label",
        title=title,
    )
    for (row, col), value in np.ndenumerate(normalized):
        if value >= 0.005:
            color = "white" if value > 0.5 else "black"
            ax.text(
                col,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color=color,
            )
    return fig


def plot_examples(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, num: int = 16
) -> Figure:
    """A few test digits titled true/predicted; mistakes in red."""
    num = min(num, len(labels))
    cols = min(8, num)
    rows = math.ceil(num / cols)
    fig = Figure(figsize=(1.4 * cols, 1.6 * rows))
    for i in range(num):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(np.asarray(images[i]).reshape(28, 28), cmap="gray_r")
        wrong = labels[i] != predictions[i]
        ax.set_title(
            f"true {labels[i]} / pred {predictions[i]}",
            fontsize=7,
            color="red" if wrong else "black",
        )
        ax.axis("off")
    return fig


def weight_mosaic(kernel: np.ndarray, cols: int, gap: int = 1) -> np.ndarray:
    """Tiles a (784, units) kernel's columns as 28x28 images, each scaled by its own
    largest |weight| to [-1, 1] so every unit uses the full symmetric colour range;
    gaps are NaN (drawn blank)."""
    kernel = np.asarray(kernel, np.float64)
    units = kernel.shape[1]
    rows = math.ceil(units / cols)
    scale = np.abs(kernel).max(axis=0)
    tiles = (kernel / np.where(scale > 0, scale, 1.0)).T.reshape(units, 28, 28)
    size = 28 + gap
    mosaic = np.full((rows * size - gap, cols * size - gap), np.nan)
    for unit, tile in enumerate(tiles):
        r, c = divmod(unit, cols)
        mosaic[r * size : r * size + 28, c * size : c * size + 28] = tile
    return mosaic


def plot_weight_grid(
    kernel: np.ndarray, num_units: int | None = None, title: str = ""
) -> Figure:
    """Each first-layer unit's 784 weights as a 28x28 image (red positive, blue negative),
    drawn as one mosaic: one image call, however many units."""
    kernel = np.asarray(kernel)[:, :num_units]
    cols = math.ceil(math.sqrt(kernel.shape[1]))
    mosaic = weight_mosaic(kernel, cols)
    fig = Figure(
        figsize=(0.08 * mosaic.shape[1] / 2.9 + 1, 0.08 * mosaic.shape[0] / 2.9 + 0.6)
    )
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title or f"First hidden layer: {kernel.shape[1]} units, each 28x28")
    return fig


def write_run_figures(
    workdir: Path,
    history: list[dict],
    final: dict,
    test_images,
    test_labels,
    first_layer=None,
) -> None:
    """The figures every run leaves: log_loss.png, confusion_matrix.png, examples.png
    and, when the model has a hidden layer, first_layer_weights.png."""
    steps = [h["step"] for h in history]
    save(
        plot_log_loss(
            steps,
            [h["train/log_loss"] for h in history],
            [h["val/log_loss"] for h in history],
        ),
        workdir / "log_loss.png",
    )
    normalized = np.asarray(metrics.normalize_rows(final["val/confusion"]))
    save(
        plot_confusion_matrix(
            normalized, "Validation confusion matrix (row-normalised)"
        ),
        workdir / "confusion_matrix.png",
    )
    save(
        plot_examples(test_images, test_labels, np.asarray(final["test/predictions"])),
        workdir / "examples.png",
    )
    if first_layer is not None:
        save(
            plot_weight_grid(np.asarray(first_layer)),
            workdir / "first_layer_weights.png",
        )
