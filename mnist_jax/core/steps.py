"""The pure, compiled hot path: many training steps per call, as a `lax.scan` of static
length with no conditional (no host round trip on an accelerator), and evaluations.

Nothing here holds state between calls. Every random choice is derived from the
member's key and the step number (`fold_in`), never carried, so a run cut into chunks
anywhere (periods, checkpoints, a resume) takes exactly the same steps, and `jax.vmap`
over members trains a whole sweep in one program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mnist_jax.core import metrics, optim
from mnist_jax.data import Dataset

_SHUFFLE_STREAM, _DROPOUT_STREAM = 2, 3
# Evaluations run over this many rows at a time: a block's activations stay in the CPU's
# caches (for 16 sweep members, 1000 rows x 1600 units is 6 MB; the whole pool's would
# be 64 MB); docs/performance.md has the measurement.
EVAL_BLOCK_ROWS = 1000
# `train.matmul_precision`'s choices, as `jax.default_matmul_precision` names them:
# float32 is TF1's arithmetic (and what a CPU does anyway); GPUs otherwise default to
# TensorFloat-32 and TPUs to bfloat16 passes, faster but not the notebook's numbers.
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: steps taken so far
    params: nnx.State
    opt_state: optax.OptState


class Member(NamedTuple):
    """What distinguishes one run from another of the same shapes (a sweep's vmap axis)."""

    train_idx: jax.Array  # int32 (num_train,): pool rows used for training
    val_idx: jax.Array  # int32 (num_val,): pool rows used for validation
    key: jax.Array  # the run's base PRNG key
    learning_rate: jax.Array
    clip_norm: jax.Array


@dataclasses.dataclass(frozen=True)
class Program:
    """The static half of a run (architecture, batch size, loss reduction): hashable, so it
    keys jit's cache; the arrays it works on are always arguments, never constants."""

    graphdef: nnx.GraphDef
    batch_size: int
    loss_reduction: str
    mesh: Mesh | None = None  # rows of batches and of evaluations shard along "data"
    optimizer: str = "adagrad"  # an `optim.OPTIMIZERS` name
    optimizer_fields: tuple[tuple[str, Any], ...] = ()  # its config fields, as items
    matmul_precision: str = "float32"  # a `MATMUL_PRECISIONS` name, for every program

    def make_optimizer(self, learning_rate, clip_norm) -> optax.GradientTransformation:
        return optim.make_optimizer(
            self.optimizer, learning_rate, clip_norm, **dict(self.optimizer_fields)
        )

    def shard_rows(self, x: jax.Array) -> jax.Array:
        """Splits a batch's rows over the mesh's data axis; GSPMD then runs each device
        on its rows and all-reduces the gradients. A no-op on one device."""
        if self.mesh is None or self.mesh.shape["data"] == 1:
            return x
        spec = PartitionSpec("data", *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def logits(self, params, x, dropout_key=None):
        return nnx.merge(self.graphdef, params)(x, dropout_key=dropout_key)

    def init_state(self, params) -> TrainState:
        # No optimizer's state depends on the step size or clip, so any values do here.
        opt_state = self.make_optimizer(1.0, 1.0).init(params)
        return TrainState(jnp.zeros((), jnp.int32), params, opt_state)

    def steps_per_epoch(self, member: Member) -> int:
        return member.train_idx.shape[-1] // self.batch_size

    def epoch_order(self, member: Member, epoch: jax.Array) -> jax.Array:
        """The order (num_train,) in which `epoch` visits the training rows: a
        permutation drawn from `fold_in(key, epoch)`. Its own program, called once per
        epoch (by `loop.EpochOrders`): drawn inside the training loop it would be a
        conditional, and drawn per chunk it would cost more than the steps (a sort)."""
        shuffle_key = jax.random.fold_in(member.key, _SHUFFLE_STREAM)
        num_train = member.train_idx.shape[0]
        return jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)

    def chunk_epochs(self, num_steps: int, member: Member) -> int:
        """How many epoch orders `train_steps` takes: the most epochs `num_steps`
        consecutive steps can touch, wherever they start."""
        per_epoch = self.steps_per_epoch(member)
        return max(num_steps + per_epoch - 2, 0) // per_epoch + 1

    def batch_rows(
        self, step: jax.Array, num_steps: int, orders: jax.Array, member: Member
    ) -> jax.Array:
        """The pool rows (num_steps, batch_size) of steps `step`, ...,
        `step + num_steps - 1`, from `orders` (`chunk_epochs`, num_train): the orders of
        epochs `step // steps_per_epoch` onwards. The trailing partial batch of each
        epoch is dropped."""
        steps_per_epoch = self.steps_per_epoch(member)
        step_numbers = step + jnp.arange(num_steps, dtype=step.dtype)
        epoch = (step_numbers // steps_per_epoch - step // steps_per_epoch)[:, None]
        start = ((step_numbers % steps_per_epoch) * self.batch_size)[:, None]
        columns = start + jnp.arange(self.batch_size)[None, :]
        return member.train_idx[orders[epoch, columns]]

    def train_steps(
        self,
        state: TrainState,
        num_steps: int,
        data: Dataset,
        member: Member,
        orders: jax.Array,
    ) -> tuple[TrainState, jax.Array]:
        """`num_steps` steps as one `lax.scan`. `num_steps` is static (jit it with
        `static_argnums=1`): one compilation per chunk length, and a loop whose trip
        count XLA knows and whose body has no conditional, so an accelerator runs the
        whole chunk without a round trip to the host. The batches' rows are gathered
        before the loop from `orders` (see `batch_rows`; `loop.EpochOrders` draws them).

        Also returns the first step (0-based) whose loss or gradient norm was NaN or
        infinite, or -1: divergence is caught in the chunk where it happens."""
        rows = self.batch_rows(state.step, num_steps, jnp.asarray(orders), member)
        with jax.default_matmul_precision(self.matmul_precision):
            return self._train_steps(state, rows, data, member)

    def _train_steps(self, state, rows, data, member):
        dropout_key = jax.random.fold_in(member.key, _DROPOUT_STREAM)
        tx = self.make_optimizer(member.learning_rate, member.clip_norm)

        def loss_fn(params, x, y, key):
            logits = self.logits(params, x, dropout_key=key)
            return optim.cross_entropy(logits, y, self.loss_reduction)

        def step_fn(carry, rows):
            state, nonfinite = carry
            loss, grads = jax.value_and_grad(loss_fn)(
                state.params,
                self.shard_rows(data.pool_x[rows]),
                self.shard_rows(data.pool_y[rows]),
                jax.random.fold_in(dropout_key, state.step),
            )
            finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
            nonfinite = jnp.where((nonfinite < 0) & ~finite, state.step, nonfinite)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return (TrainState(state.step + 1, params, opt_state), nonfinite), None

        (state, nonfinite), _ = jax.lax.scan(step_fn, (state, jnp.int32(-1)), rows)
        return state, nonfinite

    def row_scores(self, params, x: jax.Array, y: jax.Array):
        """Per row: every metric's value ({name: (N,)}) and the predicted class,
        computed `EVAL_BLOCK_ROWS` rows at a time (`lax.map`) so that no activation
        larger than a block is ever stored."""
        with jax.default_matmul_precision(self.matmul_precision):
            return self._row_scores(params, x, y)

    def _row_scores(self, params, x, y):
        def score(x, y):
            logits = self.logits(params, self.shard_rows(x))
            return metrics.row_values(logits, y), jnp.argmax(logits, axis=-1)

        num_blocks, rest = divmod(x.shape[0], EVAL_BLOCK_ROWS)
        if num_blocks <= 1:
            return score(x, y)
        full = num_blocks * EVAL_BLOCK_ROWS
        blocks = jax.lax.map(
            lambda xy: score(*xy),
            (
                x[:full].reshape(num_blocks, EVAL_BLOCK_ROWS, *x.shape[1:]),
                y[:full].reshape(num_blocks, EVAL_BLOCK_ROWS),
            ),
        )
        blocks = jax.tree.map(lambda b: b.reshape(full), blocks)
        if not rest:
            return blocks
        tail = score(x[full:], y[full:])
        return jax.tree.map(lambda *parts: jnp.concatenate(parts), blocks, tail)

    def pool_scores(
        self, params, data: Dataset, member: Member
    ) -> dict[str, jax.Array]:
        """Every metric on the training and validation rows, from one pass over the pool.

        Scoring the whole pool and then reducing over each split's rows keeps the
        data unbatched under a sweep's vmap, so the first layer of every member is one
        large matrix product instead of many small ones."""
        values, _ = self.row_scores(params, data.pool_x, data.pool_y)
        scores = {}
        for split, idx in (("train", member.train_idx), ("val", member.val_idx)):
            scores |= metrics.reduce(split, {n: v[idx] for n, v in values.items()})
        return scores

    def test_scores(self, params, data: Dataset) -> dict[str, jax.Array]:
        """Every metric on the test set alone: all a sweep member adds at its end (its
        validation numbers are its last period's)."""
        values, _ = self.row_scores(params, data.test_x, data.test_y)
        return metrics.reduce("test", values)

    def final_evaluation(
        self, params, data: Dataset, member: Member
    ) -> dict[str, jax.Array]:
        """Validation and test scores, the validation confusion matrix (the notebook's)
        and test-set predictions, in one call."""
        # Scored over the whole pool as `pool_scores` does, so the final validation
        # numbers are exactly the last period's.
        pool_values, pool_predictions = self.row_scores(
            params, data.pool_x, data.pool_y
        )
        val_values = {n: v[member.val_idx] for n, v in pool_values.items()}
        val_y, val_pred = data.pool_y[member.val_idx], pool_predictions[member.val_idx]
        test_values, test_predictions = self.row_scores(
            params, data.test_x, data.test_y
        )
        return {
            **metrics.reduce("val", val_values),
            **metrics.reduce("test", test_values),
            "val/confusion": metrics.confusion_matrix(val_y, val_pred),
            "test/predictions": test_predictions,
        }
