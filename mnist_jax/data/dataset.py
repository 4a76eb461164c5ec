"""MNIST for the notebook's protocol: pick a source, load it once, put it on the device.

The rows used for training and validation (the "pool": the first `num_examples` rows)
and the test set live on the device as arrays; a seed turns into train/validation
indices there, so many seeds can share one copy of the data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.data import readers as sources

log = logging.getLogger(__name__)

_SPLIT_STREAM = 0


@dataclasses.dataclass(frozen=True)
class HostData:
    """What a source gave us, on the host, before the seed protocol is applied."""

    pool_images: np.ndarray  # uint8 (num_pool, 784): rows for train + validation
    pool_labels: np.ndarray  # int32 (num_pool,)
    test_images: np.ndarray  # uint8 (num_test, 784)
    test_labels: np.ndarray  # int32 (num_test,)
    source: str
    files: dict[str, str]  # file path -> sha256
    num_train: int  # rows of the pool used for training; the rest validate

    @property
    def num_val(self) -> int:
        return len(self.pool_labels) - self.num_train

    @functools.cached_property
    def content_sha256(self) -> str:
        """sha256 of the exact examples, whatever format or folder they came from: a
        run's data identity (computed once; a run records it and resuming checks it)."""
        content = hashlib.sha256()
        for array in (
            self.pool_images,
            self.pool_labels,
            self.test_images,
            self.test_labels,
        ):
            content.update(np.ascontiguousarray(array).tobytes())
        return content.hexdigest()

    def where(self) -> str:
        """Where the examples were read from, for messages."""
        if not self.files or self.source == "embedded":
            return "the embedded sample"
        return str(Path(next(iter(self.files))).parent)

    def fingerprint(self) -> dict:
        """Identifies the exact examples used, whatever format they came in."""
        return {
            "source": self.source,
            "files": self.files,
            "content_sha256": self.content_sha256,
            "num_pool": int(len(self.pool_labels)),
            "num_train": int(self.num_train),
            "num_val": int(self.num_val),
            "num_test": int(len(self.test_labels)),
        }


class Dataset(NamedTuple):
    """Device arrays: pixels scaled to [0, 1] (the notebook's `/ 255`), int32 labels.
    Training programs get it `without_test()`: they never see the test set."""

    pool_x: jax.Array
    pool_y: jax.Array
    test_x: jax.Array | None
    test_y: jax.Array | None

    def without_test(self) -> Dataset:
        return self._replace(test_x=None, test_y=None)


def pool_spec(num_pool: int) -> Dataset:
    """The shapes of a training program's data argument, before any data is read."""
    return Dataset(
        jax.ShapeDtypeStruct((num_pool, sources.NUM_PIXELS), jnp.float32),
        jax.ShapeDtypeStruct((num_pool,), jnp.int32),
        None,
        None,
    )


def to_device(host: HostData, sharding=None) -> Dataset:
    """Scaled on the host (one transfer, no eager device op to compile), then placed
    with `sharding` (default: the default device). The whole set is small, so every
    device holds it: each then gathers its share of a batch's rows locally."""

    def put(array):
        return jax.device_put(array, sharding)

    return Dataset(
        pool_x=put(host.pool_images.astype(np.float32) / np.float32(255.0)),
        pool_y=put(host.pool_labels),
        test_x=put(host.test_images.astype(np.float32) / np.float32(255.0)),
        test_y=put(host.test_labels),
    )


def split_indices(seed: int | jax.Array, num_pool: int, num_train: int):
    """The notebook's shuffle of the pool, then head = train, tail = validation."""
    key = jax.random.fold_in(jax.random.key(seed), _SPLIT_STREAM)
    order = jax.random.permutation(key, num_pool)
    return order[:num_train], order[num_train:]
