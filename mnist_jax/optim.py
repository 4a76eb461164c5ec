"""The notebook's optimizer and loss with TF1 semantics.

TF1's `AdagradOptimizer` starts its accumulator at 0.1 and has no epsilon;
`clip_gradients_by_norm(opt, 5.0)` clips by global norm. The canned estimators sum the
loss over the batch (`loss_reduction=SUM`), which makes the first gradients large
enough (norm ~120) that the clip really fires.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LOSS_REDUCTIONS = ("sum", "mean")
TF1_ADAGRAD_INITIAL_ACCUMULATOR = 0.1


def make_optimizer(
    learning_rate: float | jax.Array, clip_norm: float | jax.Array
) -> optax.GradientTransformation:
    """TF1's `clip_gradients_by_norm` then `AdagradOptimizer`, as TF1 computes them.

    Both arguments may be traced, so a sweep can vmap over them. The state is that of
    `optax.chain(clip_by_global_norm, adagrad)`, so checkpoints hold optax's own types.
    The update is written out because TF1's form clips with one scalar factor, which
    XLA folds into Adagrad's two passes over the parameters; optax's clip writes the
    clipped gradients out first, a third pass that cost ~10% of a sweep's training."""
    reference = optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adagrad(
            learning_rate,
            initial_accumulator_value=TF1_ADAGRAD_INITIAL_ACCUMULATOR,
            eps=0.0,
        ),
    )

    def update(grads, state, params=None):
        del params
        clip_state, (rss_state, scale_state) = state
        # tf.clip_by_global_norm: t * clip_norm * min(1 / global_norm, 1 / clip_norm).
        norm = optax.global_norm(grads)
        factor = clip_norm * jnp.minimum(1.0 / norm, 1.0 / clip_norm)
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
