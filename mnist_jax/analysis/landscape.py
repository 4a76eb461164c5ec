"""The loss on lines and planes through parameter space: linear mode connectivity
(Frankle et al. 2020: is there a barrier on the straight path between two solutions?)
and 2-D slices along filter-normalised random directions (Li et al. 2018).

Every point of a path, and every point of a slice, is scored in one compiled call
(`vmap` over the interpolation weights or grid coordinates), compiled once per
`Program` (its model's shapes) and reused for every checkpoint and run of that shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.core import metrics, steps
from mnist_jax.platform import startup

# (path of a parameter, its shape) -> the axis that indexes its filters (output units),
# or None to leave the parameter out of the directions (Li et al. zero biases'
# directions). A model overrides it with a `filter_axis` static method (models.py).
FilterAxis = Callable[[tuple[str, ...], tuple[int, ...]], int | None]


def per_output_unit(path: tuple[str, ...], shape: tuple[int, ...]) -> int | None:
    """The default split: a kernel's last axis (a dense layer's output units, a
    convolution's output channels); vectors (biases) are left out."""
    del path
    return -1 if len(shape) >= 2 else None


def interpolate(a, b, alpha):
    """(1 - alpha) * a + alpha * b, leaf by leaf."""
    return jax.tree.map(lambda x, y: (1 - alpha) * x + alpha * y, a, b)


def barrier(losses, alphas=None) -> float:
    """The largest excess of a path's loss over the straight line between its
    endpoints' losses (0 when the path is never above that line)."""
    losses = np.asarray(losses, dtype=np.float64)
    if alphas is None:
        alphas = np.linspace(0.0, 1.0, len(losses))
    line = (1 - np.asarray(alphas)) * losses[0] + np.asarray(alphas) * losses[-1]
    return float(max(np.max(losses - line), 0.0))


@functools.cache
def path_scorer(program: steps.Program):
    """Jitted `(a, b, alphas, dataset, member) -> {"train/log_loss": (N,), ...}`:
    every metric on the member's training and validation rows at each point
    `interpolate(a, b, alpha)`, as metrics.jsonl reports them."""

    def score(a, b, alphas, dataset, member):
        def at(alpha):
            return program.pool_scores(interpolate(a, b, alpha), dataset, member)

        return jax.vmap(at)(alphas)

    return startup.jit(score)


def path_metrics(program, a, b, dataset, member, num_points: int = 25) -> dict:
    """{"alpha": (N,), "train/log_loss": (N,), ...} at `num_points` evenly spaced
    points from a (alpha 0) to b (alpha 1), endpoints included."""
    alphas = jnp.linspace(0.0, 1.0, num_points)
    values = path_scorer(program)(a, b, alphas, dataset, member)
    return {
        "alpha": np.asarray(alphas),
        **{k: np.asarray(v) for k, v in values.items()},
    }


def filter_axis_of(model) -> FilterAxis:
    """The model's own `filter_axis`, else `per_output_unit`."""
    return getattr(type(model), "filter_axis", per_output_unit)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def filter_normalized_direction(key: jax.Array, params, filter_axis: FilterAxis):
    """A random Gaussian direction scaled filter by filter to the norm of the same
    filter in `params` (Li et al. 2018), so that a step of 1 along it moves every
    filter by its own size whatever the layer's scale; zero for parameters
    `filter_axis` leaves out."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))
    directions = []
    for (path, p), k in zip(leaves, keys, strict=True):
        names = tuple(_key_name(part) for part in path if _key_name(part) != "value")
        axis = filter_axis(names, tuple(p.shape))
        if axis is None:
            directions.append(jnp.zeros_like(p))
            continue
        others = tuple(i for i in range(p.ndim) if i != axis % p.ndim)
        d = jax.random.normal(k, p.shape, p.dtype)
        scale = _norm(p, others)
        directions.append(d * scale / (_norm(d, others) + 1e-10))
    return jax.tree_util.tree_unflatten(treedef, directions)


def _norm(x, axes: tuple[int, ...]):
    """Euclidean norm over `axes`, kept as size-1 axes (over none: |x|)."""
    return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))


def grid_coords(num_points: int = 21, extent: float = 1.0) -> np.ndarray:
    """`num_points` evenly spaced coordinates in [-extent, extent] (0 included when
    `num_points` is odd: the checkpoint itself)."""
    return np.linspace(-extent, extent, num_points)


@functools.cache
def surface_scorer(program: steps.Program):
    """Jitted `(params, d1, d2, coords, x, y) -> (G, G)`: the mean log loss of rows
    (x, y) at `params + coords[i] * d1 + coords[j] * d2`; a grid row per `lax.map`
    step, its points `vmap`-ed, so that activations stay one row's size."""

    def surface(params, d1, d2, coords, x, y):
        def at(a, b):
            moved = jax.tree.map(lambda p, u, v: p + a * u + b * v, params, d1, d2)
            return metrics.log_loss(program.logits(moved, x), y)

        with jax.default_matmul_precision(program.matmul_precision):
            return jax.lax.map(lambda a: jax.vmap(lambda b: at(a, b))(coords), coords)

    return startup.jit(surface)


def loss_surface(program, params, directions, coords, x, y) -> np.ndarray:
    """(G, G): loss at coords[i] along the first direction and coords[j] along the
    second."""
    d1, d2 = directions
    return np.asarray(
        surface_scorer(program)(params, d1, d2, jnp.asarray(coords), x, y)
    )
