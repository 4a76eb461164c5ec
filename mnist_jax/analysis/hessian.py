"""The curvature of the training loss at a checkpoint, from Hessian-vector products
alone (what PyHessian computes): its top eigenvalues by Lanczos and its trace by
Hutch++ on Lanczos' basis, never forming the Hessian (89k x 89k for the notebook's MLP).

The loss is the run's own objective (`optim.cross_entropy` with the run's
`loss_reduction`: summed over the rows, as TF1 does, or averaged), without dropout,
on fixed rows the caller records. Each function of a `Program` is compiled once and
reused for every checkpoint and member of that shape.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from mnist_jax.core import optim, steps
from mnist_jax.platform import startup

TOP_K = 3
LANCZOS_ITERATIONS = 48
TRACE_PROBES = 48  # Rademacher probes outside the Krylov space, for the trace


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


class Krylov(NamedTuple):
    """What Lanczos leaves: an orthonormal basis (m, dim) of the Krylov space and the
    operator restricted to it, tridiagonal (m, m)."""

    basis: jax.Array
    tridiagonal: jax.Array


def lanczos(matvec, v0: jax.Array, num_iters: int) -> Krylov:
    """`num_iters` Lanczos steps from `v0`, with full reorthogonalisation (so that no
    spurious copy of a converged eigenvalue appears). The tridiagonal matrix's
    extreme eigenvalues converge to the operator's first. A `fori_loop` of static
    length with no conditional."""
    dim = v0.shape[0]
    basis = jnp.zeros((num_iters, dim), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))

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
        basis = basis.at[jnp.minimum(i + 1, num_iters - 1)].set(
            jnp.where(i + 1 < num_iters, q_next, basis[num_iters - 1])
        )
        return basis, alphas.at[i].set(alpha), betas.at[i].set(beta)

    zeros = jnp.zeros(num_iters, v0.dtype)
    basis, alphas, betas = jax.lax.fori_loop(0, num_iters, body, (basis, zeros, zeros))
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return Krylov(basis, tridiagonal)


def top_eigenvalues(krylov: Krylov, k: int = TOP_K) -> jax.Array:
    """The k largest eigenvalues, largest first."""
    return jnp.linalg.eigvalsh(krylov.tridiagonal)[::-1][:k]


def deflated_trace(matmat, krylov: Krylov, key, num_probes: int = TRACE_PROBES):
    """The trace: exact on the Krylov space (the trace of its tridiagonal matrix,
    where the largest eigenvalues live), plus Hutchinson's Rademacher estimate on the
    rest, which holds only the small ones. Hutch++ (Meyer et al. 2021) with Lanczos'
    basis for its sketch: the products Lanczos made serve twice. `matmat` maps
    (dim, p) to H @ it."""
    basis = krylov.basis
    probes = jax.random.rademacher(key, (basis.shape[1], num_probes), jnp.float32)
    rest = probes - basis.T @ (basis @ probes)
    return jnp.trace(krylov.tridiagonal) + jnp.trace(rest.T @ matmat(rest)) / num_probes


@functools.cache
def curvature(
    program: steps.Program,
    k: int = TOP_K,
    num_iters: int = LANCZOS_ITERATIONS,
    trace_probes: int = TRACE_PROBES,
):
    """Jitted `(params, key, x, y) -> (top k eigenvalues, trace)` of the training
    loss's Hessian on rows (x, y); `trace_probes=0` skips the trace (NaN)."""
    loss = training_loss(program)

    def measure(params, key, x, y):
        with jax.default_matmul_precision(program.matmul_precision):
            dim, matvec = flat_hvp(loss, params, x, y)
            start_key, trace_key = jax.random.split(key)
            krylov = lanczos(
                matvec, jax.random.normal(start_key, (dim,)), min(num_iters, dim)
            )
            top = top_eigenvalues(krylov, k)
            if not trace_probes:
                return top, jnp.float32(jnp.nan)
            matmat = jax.vmap(matvec, in_axes=1, out_axes=1)
            return top, deflated_trace(matmat, krylov, trace_key, trace_probes)

    return startup.jit(measure)
