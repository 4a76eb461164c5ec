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
    """Both arguments may be traced, so a sweep can vmap over them."""
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adagrad(
            learning_rate,
            initial_accumulator_value=TF1_ADAGRAD_INITIAL_ACCUMULATOR,
            eps=0.0,
        ),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, reduction: str) -> jax.Array:
    """Softmax cross-entropy of integer labels, summed (TF1 default) or averaged."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if reduction == "sum":
        return jnp.sum(losses)
    if reduction == "mean":
        return jnp.mean(losses)
    raise ValueError(f"loss reduction {reduction!r} is not one of {LOSS_REDUCTIONS}")
