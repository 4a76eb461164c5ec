"""Parsed examples kept in the cache folder, keyed by the content of their source file.

Parsing the notebook's 55 MB of CSV on every run costs far more than reading the same
validated arrays back (docs/performance.md). An entry is named by the sha256 of
the file it came from and by what was read from it, so an edited file is a new entry,
never a stale one. Entries are written only after validation passed and renamed into
place whole; one that cannot be read is parsed again, and a cache that cannot be
written is skipped: the cache can make a run faster, never wrong or failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mnist_jax.data import download
from mnist_jax.data import readers as sources

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when a reader's output changes for the same file
Examples = tuple[np.ndarray, np.ndarray]  # (images uint8 (N, 784), labels int32 (N,))


def entry_path(file_sha256: str, reader: str, **options) -> Path:
    key = json.dumps([FORMAT_VERSION, file_sha256, reader, options], sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    return download.cache_dir() / "parsed" / f"{name}.npz"


def read(
    file_sha256: str, parse: Callable[..., Examples], *args, **options
) -> Examples:
    """`parse(*args, **options)`, or the arrays it gave for the same file before."""
    entry = entry_path(file_sha256, parse.__qualname__, **options)
    cached = _load(entry)
    if cached is not None:
        return cached
    examples = parse(*args, **options)
    _store(entry, *examples)
    return examples


def _load(entry: Path) -> Examples | None:
    try:
        with np.load(entry, allow_pickle=False) as stored:
            images, labels = stored["images"], stored["labels"]
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged entry: numpy raises OSError, ValueError, ...
        log.warning("%s: unreadable cache entry (%s); parsing again.", entry, e)
        return None
    if not _valid(images, labels):
        log.warning("%s: cache entry has unexpected arrays; parsing again.", entry)
        return None
    return images, labels


def _valid(images: np.ndarray, labels: np.ndarray) -> bool:
    return (
        images.dtype == np.uint8
        and labels.dtype == np.int32
        and images.ndim == 2
        and images.shape == (len(labels), sources.NUM_PIXELS)
        and (labels.size == 0 or 0 <= labels.min() <= labels.max() < 10)
    )


def _store(entry: Path, images: np.ndarray, labels: np.ndarray) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, labels=labels)
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        log.info("Not caching parsed data in %s (%s).", entry.parent, e)
