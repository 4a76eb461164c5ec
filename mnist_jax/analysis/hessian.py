"""The curvature of the training loss at a checkpoint, from Hessian-vector products
alone (what PyHessian computes): its top eigenvalues by Lanczos and its trace by
Hutch++, never forming the Hessian (89k x 89k for the notebook's MLP).

The loss is the run's own objective (`optim.cross_entropy` with the run's
`loss_reduction`: summed over the rows, as TF1 does, or averaged), without dropout,
on fixed rows the caller records. Each function of a `Program` is compiled once and
reused for every checkpoint and member of that shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from mnist_jax.core import optim, steps
from mnist_jax.platform import startup

TOP_K = 3
LANCZOS_ITERATIONS = 48
TRACE_QUERIES = 120  # Hessian-vector products for Hutch++ (a multiple of 3)


def training_loss(program: steps.Program):
    """(params, x, y) -> the run's objective on those rows, without dropout."""

    def loss(params, x, y):
        logits = program.logits(params, x)
        return optim.cross_entropy(logits, y, program.loss_reduction)

    return loss


def hvp(loss, params, vector, *batch):
    """H @ vector, forward-over-reverse: the directional derivative of the gradient."""
    return jax.jvp(lambda p: jax.grad(loss)(p, *batch), (params,), (vector,))[1]


def flat_hvp(loss, params, *batch):
    """(dim, v -> H @ v) on flat vectors (`ravel_pytree` order)."""
    flat, unravel = ravel_pytree(params)

    def matvec(v):
        return ravel_pytree(hvp(loss, params, unravel(v), *batch))[0]

    return flat.shape[0], matvec


def lanczos(matvec, v0: jax.Array, num_iters: int) -> jax.Array:
    """The eigenvalues (ascending) of the `num_iters` x `num_iters` tridiagonal matrix
    Lanczos builds from `v0`, with full reorthogonalisation (so that no spurious copy
    of a converged eigenvalue appears). Its extreme values converge to the operator's
    extreme eigenvalues first. A `fori_loop` of static length with no conditional."""
    dim = v0.shape[0]
    basis = (
        jnp.zeros((num_iters + 1, dim), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    )

    def body(i, carry):
        basis, alphas, betas = carry
        q = basis[i]
        w = matvec(q)
        alpha = jnp.vdot(w, q)
        # Against every vector so far (the rows not yet filled are zero), twice.
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        # beta ~ 0: an invariant subspace is exhausted; continue from nothing.
        q_next = jnp.where(
            beta > 1e-10 * jnp.abs(alpha), w / jnp.maximum(beta, 1e-30), 0
        )
        return (
            basis.at[i + 1].set(q_next),
            alphas.at[i].set(alpha),
            betas.at[i].set(beta),
        )

    zeros = jnp.zeros(num_iters, v0.dtype)
    _, alphas, betas = jax.lax.fori_loop(0, num_iters, body, (basis, zeros, zeros))
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.linalg.eigvalsh(tridiagonal)


def top_eigenvalues(
    matvec, dim: int, key, k: int = TOP_K, num_iters: int = LANCZOS_ITERATIONS
):
    """The k largest eigenvalues, largest first."""
    v0 = jax.random.normal(key, (dim,))
    return lanczos(matvec, v0, min(num_iters, dim))[::-1][:k]


def hutchpp_trace(matmat, dim: int, key, num_queries: int = TRACE_QUERIES) -> jax.Array:
    """Hutch++ (Meyer et al. 2021): the trace exactly on the span the Hessian
    stretches most (a third of the queries find it), Hutchinson's Rademacher
    estimate on the rest; far less variance than Hutchinson alone when a few
    eigenvalues dominate, as they do here. `matmat` maps (dim, m) to H @ it."""
    m = max(num_queries // 3, 1)
    sketch_key, probe_key = jax.random.split(key)
    sketch = jax.random.rademacher(sketch_key, (dim, m), jnp.float32)
    probes = jax.random.rademacher(probe_key, (dim, m), jnp.float32)
    q, _ = jnp.linalg.qr(matmat(sketch))
    rest = probes - q @ (q.T @ probes)
    return jnp.trace(q.T @ matmat(q)) + jnp.trace(rest.T @ matmat(rest)) / m


@functools.cache
def curvature(
    program: steps.Program,
    k: int = TOP_K,
    num_iters: int = LANCZOS_ITERATIONS,
    trace_queries: int = TRACE_QUERIES,
):
    """Jitted `(params, key, x, y) -> (top k eigenvalues, trace)` of the training
    loss's Hessian on rows (x, y); `trace_queries=0` skips the trace (NaN)."""
    loss = training_loss(program)

    def measure(params, key, x, y):
        with jax.default_matmul_precision(program.matmul_precision):
            dim, matvec = flat_hvp(loss, params, x, y)
            eig_key, trace_key = jax.random.split(key)
            top = top_eigenvalues(matvec, dim, eig_key, k, num_iters)
            if not trace_queries:
                return top, jnp.float32(jnp.nan)
            matmat = jax.vmap(matvec, in_axes=1, out_axes=1)
            return top, hutchpp_trace(matmat, dim, trace_key, trace_queries)

    return startup.jit(measure)
