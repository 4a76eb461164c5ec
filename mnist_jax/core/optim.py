"""Optimizers by name (`config.optim.name`), each behind the notebook's gradient clip,
and the loss.

The default is the notebook's: TF1's `clip_gradients_by_norm(opt, 5.0)` around
`AdagradOptimizer`, which starts its accumulator at 0.1 and has no epsilon. The canned
estimators sum the loss over the batch (`loss_reduction=SUM`), which makes the first
gradients large enough (norm ~120) that the clip really fires.

A new optimizer is one `@OPTIMIZERS.register(name, fields=...)` definition: it takes
`learning_rate` (traced, so a sweep vmaps over it) and its own `config.optim.*` fields,
and returns an optax `GradientTransformation`; `make_optimizer` puts the clip in front.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mnist_jax.registry import Registry

LOSS_REDUCTIONS = ("sum", "mean")
TF1_ADAGRAD_INITIAL_ACCUMULATOR = 0.1

OPTIMIZERS = Registry("optim")


@OPTIMIZERS.register("adagrad")
def adagrad(learning_rate):
    """TF1's Adagrad; `make_optimizer` fuses it with the clip (see `tf1_clipped_adagrad`)."""
    return optax.adagrad(
        learning_rate,
        initial_accumulator_value=TF1_ADAGRAD_INITIAL_ACCUMULATOR,
        eps=0.0,
    )


@OPTIMIZERS.register("sgd")
def sgd(learning_rate):
    return optax.sgd(learning_rate)


@OPTIMIZERS.register("momentum", fields={"momentum": 0.9})
def momentum(learning_rate, momentum):
    return optax.sgd(learning_rate, momentum=momentum)


@OPTIMIZERS.register("adam")
def adam(learning_rate):
    return optax.adam(learning_rate)


@OPTIMIZERS.register("adamw", fields={"weight_decay": 1e-4})
def adamw(learning_rate, weight_decay):
    return optax.adamw(learning_rate, weight_decay=weight_decay)


def make_optimizer(
    name: str,
    learning_rate: float | jax.Array,
    clip_norm: float | jax.Array,
    **fields,
) -> optax.GradientTransformation:
    """Clip by global norm to `clip_norm`, then the optimizer `name` with its `fields`.
    Both numbers may be traced (a sweep vmaps over them)."""
    if name == "adagrad":
        return tf1_clipped_adagrad(learning_rate, clip_norm)
    inner = OPTIMIZERS.entry(name).build(learning_rate, **fields)
    return optax.chain(clip_by_global_norm(clip_norm), inner)


def clip_factor(grads, clip_norm: float | jax.Array) -> jax.Array:
    """tf.clip_by_global_norm's scale, clip_norm * min(1 / global_norm, 1 / clip_norm),
    with 1 / global_norm spelt as rsqrt of the sum of squares: XLA's simplifier turns
    1 / sqrt into rsqrt in some programs (a single run) but not in others (a sweep
    sharded over devices), and the two round differently, so a member drifted from its
    single run."""
    inverse_norm = jax.lax.rsqrt(optax.tree.norm(grads, squared=True))
    return clip_norm * jnp.minimum(inverse_norm, 1.0 / clip_norm)


def clip_by_global_norm(clip_norm: float | jax.Array) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` (its state too) with `clip_factor`'s arithmetic."""

    def update(grads, state, params=None):
        del params
        factor = clip_factor(grads, clip_norm)
        return jax.tree.map(lambda g: g * factor, grads), state

    return optax.GradientTransformation(optax.clip_by_global_norm(1.0).init, update)


def tf1_clipped_adagrad(
    learning_rate: float | jax.Array, clip_norm: float | jax.Array
) -> optax.GradientTransformation:
    """TF1's `clip_gradients_by_norm` then `AdagradOptimizer`, as TF1 computes them.

    The state is that of `optax.chain(clip_by_global_norm, adagrad)`, so checkpoints
    hold optax's own types. The update is written out because TF1's form clips with one
    scalar factor, which XLA folds into Adagrad's two passes over the parameters;
    optax's clip writes the clipped gradients out first, a third pass over them."""
    reference = optax.chain(
        optax.clip_by_global_norm(clip_norm), adagrad(learning_rate)
    )

    def update(grads, state, params=None):
        del params
        clip_state, (rss_state, scale_state) = state
        factor = clip_factor(grads, clip_norm)
        # ApplyAdagrad: accum += grad^2; var -= grad * lr * rsqrt(accum).
        sums = jax.tree.map(
            lambda g, s: s + jnp.square(g * factor), grads, rss_state.sum_of_squares
        )
        updates = jax.tree.map(
            lambda g, s: -(g * factor * learning_rate * jax.lax.rsqrt(s)), grads, sums
        )
        rss_state = optax.ScaleByRssState(sum_of_squares=sums)
        return updates, (clip_state, (rss_state, scale_state))

    return optax.GradientTransformation(reference.init, update)


def cross_entropy(logits: jax.Array, labels: jax.Array, reduction: str) -> jax.Array:
    """Softmax cross-entropy of integer labels, summed (TF1 default) or averaged."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if reduction == "sum":
        return jnp.sum(losses)
    if reduction == "mean":
        return jnp.mean(losses)
    raise ValueError(f"loss reduction {reduction!r} is not one of {LOSS_REDUCTIONS}")
