"""The notebook's figures, drawn with matplotlib's object API (no pyplot global state)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_jax.core import metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Saves atomically, so an interrupted run never leaves half a PNG."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    # No bbox_inches="tight": it renders everything twice. Fast zlib: quicker, files a
    # little larger.
    fig.savefig(tmp, dpi=100, pil_kwargs={"compress_level": 1})
    os.replace(tmp, path)
    return path


def plot_curve(history: list[dict], name: str) -> Figure:
    """A metric's training and validation values per period (`log_loss.png`)."""
    steps = [h["step"] for h in history]
    label = name.replace("_", " ")
    fig = new_figure(figsize=(6, 4))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    ax = fig.add_subplot()
    for split, split_label in (("train", "training"), ("val", "validation")):
        values = [h[metrics.key(split, name)] for h in history]
        ax.plot(steps, values, marker="o", label=split_label)
    ax.set(xlabel="step", ylabel=label, title=f"{label.capitalize()} per period")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def draw_confusion_matrix(fig: Figure, ax, normalized: np.ndarray, title: str) -> None:
    """`normalized` rows sum to 1: row = true digit, column = predicted digit."""
    image = ax.imshow(normalized, cmap="bone_r", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true digit", fraction=0.046)
    ticks = range(normalized.shape[0])
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted label", ylabel="true label")
    ax.set_title(title)
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


def plot_confusion_matrix(
    normalized: np.ndarray, title: str = "Confusion matrix"
) -> Figure:
    fig = new_figure(figsize=(6, 5))
    fig.subplots_adjust(left=0.1, right=0.9, bottom=0.1, top=0.93)
    draw_confusion_matrix(fig, fig.add_subplot(), normalized, title)
    return fig


def plot_confusion_matrices(named: dict[str, np.ndarray]) -> Figure:
    """Several row-normalised confusion matrices side by side, e.g. linear vs MLP."""
    fig = new_figure(figsize=(6 * len(named), 4.8))
    fig.subplots_adjust(left=0.06, right=0.93, bottom=0.1, top=0.93, wspace=0.35)
    for i, (name, normalized) in enumerate(named.items()):
        draw_confusion_matrix(
            fig, fig.add_subplot(1, len(named), i + 1), normalized, name
        )
    return fig


def plot_curve_overlay(histories: dict[str, list[dict]], name: str) -> Figure:
    """A metric's training (dashed) and validation (solid) values of several runs."""
    label = name.replace("_", " ")
    fig = new_figure(figsize=(7, 4.5))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)
    ax = fig.add_subplot()
    for i, (run, history) in enumerate(histories.items()):
        steps = [h["step"] for h in history]
        for split, style in (("val", "-"), ("train", "--")):
            ax.plot(
                steps,
                [h[metrics.key(split, name)] for h in history],
                color=f"C{i}",
                ls=style,
                marker="o" if split == "val" else None,
                label=f"{run} {'validation' if split == 'val' else 'training'}",
            )
    ax.set(xlabel="step", ylabel=label, title=f"{label.capitalize()} per period")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_confused_pairs(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    pairs: list[dict],
    per_pair: int = 6,
) -> Figure:
    """A row per confused (true, predicted) pair, showing some of its mistakes."""
    rows = max(len(pairs), 1)
    fig = new_figure(figsize=(1.3 * per_pair + 1.5, 1.4 * rows))
    for r, pair in enumerate(pairs):
        wrong = np.flatnonzero(
            (labels == pair["true"]) & (predictions == pair["predicted"])
        )
        for c in range(per_pair):
            ax = fig.add_subplot(rows, per_pair, r * per_pair + c + 1)
            ax.axis("off")
            if c < len(wrong):
                ax.imshow(np.asarray(images[wrong[c]]).reshape(28, 28), cmap="gray_r")
            if c == 0:
                ax.set_title(
                    f"true {pair['true']} -> {pair['predicted']} ({pair['count']}x)",
                    fontsize=8,
                    loc="left",
                )
    return fig


def plot_examples(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, num: int = 16
) -> Figure:
    """A few test digits captioned true/predicted, mistakes in red; one image call."""
    num = min(num, len(labels))
    cols = min(8, num)
    rows = math.ceil(num / cols)
    tiles = np.asarray(images[:num], np.float64).reshape(num, 28, 28)
    mosaic = weight_mosaic(tiles, cols, gap=8)
    fig = new_figure(figsize=(1.2 * cols, 1.35 * rows + 0.2))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.9 - 0.1 / rows))
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    for i in range(num):
        r, c = divmod(i, cols)
        wrong = labels[i] != predictions[i]
        ax.text(
            c * 36 + 14,
            r * 36 - 2,
            f"true {labels[i]} / pred {predictions[i]}",
            ha="center",
            va="bottom",
            fontsize=7,
            color="red" if wrong else "black",
        )
    return fig


def weight_mosaic(tiles: np.ndarray, cols: int, gap: int = 1) -> np.ndarray:
    """Lays out (n, side, side) tiles row by row, `cols` a row; gaps are NaN (blank)."""
    rows = math.ceil(len(tiles) / cols)
    side = tiles.shape[-1]
    size = side + gap
    mosaic = np.full((rows * size - gap, cols * size - gap), np.nan)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        mosaic[r * size : r * size + side, c * size : c * size + side] = tile
    return mosaic


def image_side(kernel: np.ndarray) -> int:
    """The side of the square images a first layer's (inputs, units) weights form."""
    side = math.isqrt(kernel.shape[0])
    if side * side != kernel.shape[0]:
        raise ValueError(
            f"first-layer weights of shape {kernel.shape}: the inputs are not a square "
            "image (see first_layer in mnist_jax/models.py)"
        )
    return side


def unit_images(kernel: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """(side * side, units) -> (units, side, side), each unit divided by its largest
    |weight| (or by `scale`) so that it fills the symmetric colour range [-1, 1]."""
    kernel = np.asarray(kernel, np.float64)
    side = image_side(kernel)
    scale = np.abs(kernel).max(axis=0) if scale is None else scale
    return (kernel / np.where(scale > 0, scale, 1.0)).T.reshape(-1, side, side)


def plot_weight_grid(
    kernel: np.ndarray, num_units: int | None = None, title: str = ""
) -> Figure:
    """Each first-layer unit's weights as an image (red positive, blue negative), drawn
    as one mosaic: one image call, however many units."""
    kernel = np.asarray(kernel)[:, :num_units]
    cols = math.ceil(math.sqrt(kernel.shape[1]))
    mosaic = weight_mosaic(unit_images(kernel), cols)
    fig = new_figure(
        figsize=(0.08 * mosaic.shape[1] / 2.9 + 1, 0.08 * mosaic.shape[0] / 2.9 + 0.6)
    )
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    side = image_side(kernel)
    ax.set_title(title or f"First layer: {kernel.shape[1]} units, each {side}x{side}")
    return fig


def plot_weight_evolution(
    kernels: list[np.ndarray], steps: list[int], num_units: int
) -> Figure:
    """Rows = first-layer units, columns = checkpoints; each unit keeps one symmetric
    colour scale across its row, so growth and change in its weights read directly."""
    kernels = [np.asarray(k)[:, :num_units] for k in kernels]
    scale = np.max([np.abs(k).max(axis=0) for k in kernels], axis=0)
    per_step = [unit_images(k, scale) for k in kernels]
    side = per_step[0].shape[-1]
    tiles = np.stack(per_step, axis=1).reshape(-1, side, side)  # unit-major
    mosaic = weight_mosaic(tiles, cols=len(steps))
    rows = kernels[0].shape[1]
    fig = new_figure(figsize=(0.9 * len(steps) + 0.9, 0.9 * rows + 0.5))
    ax = fig.add_axes(
        (
            0.8 / (0.9 * len(steps) + 0.9),
            0.02,
            0.9 * len(steps) / (0.9 * len(steps) + 0.9),
            1 - 0.5 / (0.9 * rows + 0.5),
        )
    )
    ax.imshow(mosaic, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(
        [side // 2 + (side + 1) * i for i in range(len(steps))],
        [f"step {s}" for s in steps],
    )
    ax.set_yticks(
        [side // 2 + (side + 1) * i for i in range(kernels[0].shape[1])],
        [f"unit {u}" for u in range(kernels[0].shape[1])],
        fontsize=7,
    )
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return fig


def write_run_figures(
    workdir: Path,
    history: list[dict],
    final: dict,
    test_images,
    test_labels,
    first_layer=None,
) -> None:
    """The figures every run leaves: a curve per metric that asks for one
    (`log_loss.png`), confusion_matrix.png, examples.png and, when the model shows its
    first layer (`first_layer` in models.py), first_layer_weights.png."""
    for name, metric in metrics.METRICS.items():
        if metric.curve:
            save(plot_curve(history, name), workdir / f"{name}.png")
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
        save(plot_weight_grid(first_layer), workdir / "first_layer_weights.png")


def _grid(fig: Figure, panels: int, cols: int = 3):
    rows = math.ceil(panels / cols)
    return [fig.add_subplot(rows, min(cols, panels), i + 1) for i in range(panels)]


def plot_loss_paths(paths: list[dict]) -> Figure:
    """Training (dashed) and validation (solid) log loss along straight paths
    (`diagnostics_paths.png`): a panel per run through its consecutive checkpoints
    (segments end to end), and a panel per pair of runs, a line per step."""
    groups = list(dict.fromkeys(p["group"] for p in paths))
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = new_figure(figsize=(5 * cols, 3.8 * rows))
    fig.subplots_adjust(
        left=0.08, right=0.98, bottom=0.12, top=1 - 0.6 / (3.8 * rows), hspace=0.5
    )
    for ax, group in zip(_grid(fig, len(groups)), groups, strict=True):
        members = [p for p in paths if p["group"] == group]
        through = members[0]["kind"] == "steps"
        for n, path in enumerate(members):
            alpha = np.asarray(path["alpha"]) + (n if through else 0)
            colour = "C0" if through else f"C{n}"
            label = path["segment"] if not through else None
            ax.plot(alpha, path["val/log_loss"], color=colour, label=label)
            ax.plot(alpha, path["train/log_loss"], color=colour, ls="--")
        if through:
            ends = [members[0]["segment"].split("->")[0]]
            ends += [p["segment"].split("->")[1] for p in members]
            ax.set_xticks(range(len(ends)), [f"step {e}" for e in ends], fontsize=8)
            ax.set_title(f"{group}: through its checkpoints", fontsize=9)
        else:
            ax.set_xlabel("interpolation weight", fontsize=8)
            ax.set_title(group, fontsize=9)
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel("log loss")
    fig.suptitle("Loss on straight paths (solid: validation, dashed: training)")
    return fig


def _shared_levels(surfaces: list[np.ndarray], count: int = 16) -> np.ndarray:
    """Contour levels every slice shares, log-spaced (a basin's floor and its rim
    both drawn), so that panels compare."""
    low = max(min(float(np.min(s)) for s in surfaces), 1e-6)
    high = max(float(np.max(s)) for s in surfaces)
    return np.geomspace(low, high, count) if high > low else np.array([low])


def plot_loss_slices(slices: list[dict]) -> Figure:
    """Contours of the loss on 2-D slices around checkpoints, each marked by a cross
    (`diagnostics_slices.png`)."""
    fig = new_figure(figsize=(4.2 * len(slices), 3.8))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.13, top=0.85, wspace=0.3)
    levels = _shared_levels([np.asarray(piece["loss"]) for piece in slices])
    for i, piece in enumerate(slices):
        ax = fig.add_subplot(1, len(slices), i + 1)
        coords, loss = np.asarray(piece["coords"]), np.asarray(piece["loss"])
        contour = ax.contour(coords, coords, loss.T, levels=levels)
        ax.clabel(contour, fontsize=6, fmt="%.2g")
        ax.plot([0], [0], "kx")
        ax.set_title(piece["title"], fontsize=8)
        ax.set_xlabel("direction 1", fontsize=8)
        ax.set_aspect("equal")
    fig.axes[0].set_ylabel("direction 2", fontsize=8)
    fig.suptitle(
        "Training loss around each checkpoint (filter-normalised directions; "
        "the same levels in every panel)"
    )
    return fig


def plot_similarity(matrices: list[tuple[str, list[str], np.ndarray]]) -> Figure:
    """Heatmaps of (title, labels, square matrix), e.g. linear CKA between
    checkpoints (`diagnostics_cka.png`)."""
    fig = new_figure(figsize=(4.6 * len(matrices), 4.2))
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.2, top=0.88, wspace=0.45)
    for i, (title, labels, matrix) in enumerate(matrices):
        ax = fig.add_subplot(1, len(matrices), i + 1)
        ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
        if len(labels) <= 8:
            for r in ticks:
                for c in ticks:
                    ax.text(
                        c,
                        r,
                        f"{matrix[r, c]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="w" if matrix[r, c] < 0.6 else "k",
                    )
        ax.set_title(title, fontsize=9)
    return fig


def plot_per_class(labels: list[str], accuracy: np.ndarray) -> Figure:
    """Accuracy per digit (columns) of each checkpoint (rows): which digits are
    learned first (`diagnostics_per_class.png`)."""
    fig = new_figure(figsize=(7, 1.2 + 0.3 * len(labels)))
    fig.subplots_adjust(left=0.3, right=0.95, bottom=0.08, top=0.9)
    ax = fig.add_subplot()
    image = ax.imshow(accuracy, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(accuracy.shape[1]))
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("digit")
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_title("Validation accuracy per digit")
    return fig
