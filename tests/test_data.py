import gzip
import struct

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from mnist_jax import data
from mnist_jax.data import array_cache
from mnist_jax.data import readers as sources
from mnist_jax.errors import ConfigError, DataError


def _real_rows(num=40):
    """Real digits from the embedded sample, as (images uint8, labels int32)."""
    host = data.load(_data_config(source="embedded", num_examples=1000, num_train=750))
    return host.pool_images[:num], host.pool_labels[:num]


def _data_config(**overrides):
    base = dict(source="auto", path="", url="", num_examples=30, num_train=20)
    return ConfigDict(base | overrides)


def write_mlcc_csv(path, images, labels):
    rows = np.column_stack([labels, images])
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    return path


def write_mlcc_dir(folder, num_train=40, num_test=20):
    images, labels = _real_rows(num_train + num_test)
    folder.mkdir(parents=True, exist_ok=True)
    write_mlcc_csv(folder / sources.MLCC_TRAIN, images[:num_train], labels[:num_train])
    write_mlcc_csv(folder / sources.MLCC_TEST, images[num_train:], labels[num_train:])
    return folder, images, labels


def _idx_bytes(magic, array):
    return struct.pack(f">{2 + array.ndim - 1}I", magic, *array.shape) + array.tobytes()


def write_idx_dir(folder, images, labels, test_images, test_labels):
    folder.mkdir(parents=True, exist_ok=True)
    for name, magic, array in (
        ("train_images", 2051, images.reshape(-1, 28, 28)),
        ("train_labels", 2049, labels.astype(np.uint8)),
        ("test_images", 2051, test_images.reshape(-1, 28, 28)),
        ("test_labels", 2049, test_labels.astype(np.uint8)),
    ):
        with gzip.open(folder / sources.IDX_FILES[name], "wb") as f:
            f.write(_idx_bytes(magic, array))
    return folder


def test_mlcc_reader_round_trip(tmp_path):
    images, labels = _real_rows()
    path = write_mlcc_csv(tmp_path / "a.csv", images, labels)
    got_images, got_labels = sources.read_mlcc_csv(path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int32
    assert len(sources.read_mlcc_csv(path, nrows=7)[1]) == 7


def _mutate(tmp_path, edit):
    images, labels = _real_rows(5)
    path = write_mlcc_csv(tmp_path / "bad.csv", images, labels)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda ls: ["label," + ",".join(f"p{i}" for i in range(784))] + ls,
            "row 1, column 1: non-numeric.*header",
        ),
        (
            lambda ls: [ls[0], ls[1].replace(",0,", ",x,", 1)] + ls[2:],
            "row 2, column .*non-numeric cell 'x'",
        ),
        (
            lambda ls: [",".join(ln.split(",")[:-1]) for ln in ls],
            "expected 785 columns.*found 784",
        ),
        (lambda ls: [ls[0], ls[1] + ",0"] + ls[2:], "rows of different lengths"),
        (
            lambda ls: [ls[0], ",".join(ls[1].split(",")[:-3])] + ls[2:],
            "row 2, column 783: empty or NaN",
        ),
        (
            lambda ls: ["12" + ls[0][1:]] + ls[1:],
            "row 1, column 1: label 12 is not an integer in 0..9",
        ),
        (
            lambda ls: [ls[0][:-1] + "256"] + ls[1:],
            "row 1, column 785: pixel 256 is not an integer in 0..255",
        ),
        (lambda ls: [ls[0][:-1] + "-1"] + ls[1:], "pixel -1 is not"),
        (
            lambda ls: [ls[0][:-1] + "0.5"] + ls[1:],
            "row 1, column 785: pixel 0.5 is not",
        ),
        (
            lambda ls: [ls[0], ls[1].replace(",0,", ",nan,", 1)] + ls[2:],
            "row 2, column .*NaN",
        ),
    ],
)
def test_mlcc_reader_names_the_bad_cell(tmp_path, edit, message):
    with pytest.raises(DataError, match=message):
        sources.read_mlcc_csv(_mutate(tmp_path, edit))


def test_mlcc_reader_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        sources.read_mlcc_csv(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        sources.read_mlcc_csv(tmp_path / "empty.csv")


def test_idx_reader_round_trip_and_errors(tmp_path):
    images, labels = _real_rows(30)
    folder = write_idx_dir(
        tmp_path / "idx", images[:20], labels[:20], images[20:], labels[20:]
    )
    paths = {k: folder / v for k, v in sources.IDX_FILES.items()}
    got_images, got_labels = sources.read_idx_pair(
        paths["train_images"], paths["train_labels"]
    )
    np.testing.assert_array_equal(got_images, images[:20])
    np.testing.assert_array_equal(got_labels, labels[:20])

    with pytest.raises(DataError, match="bad IDX magic number 2049"):
        sources.read_idx_pair(paths["train_labels"], paths["train_labels"])
    with pytest.raises(DataError, match="20 images but .* has 10 labels"):
        sources.read_idx_pair(paths["train_images"], paths["test_labels"])
    truncated = tmp_path / "truncated.gz"
    with gzip.open(truncated, "wb") as f:
        f.write(_idx_bytes(2051, images[:20].reshape(-1, 28, 28))[:-100])
    with pytest.raises(DataError, match="truncated"):
        sources.read_idx_pair(truncated, paths["train_labels"])
    not_gzip = tmp_path / "fake.gz"
    not_gzip.write_bytes(b"plain text")
    with pytest.raises(DataError, match="not a gzip file"):
        sources.read_idx_pair(not_gzip, paths["train_labels"])


def test_embedded_sample_is_real_stratified_and_fixed():
    host = data.load(
        _data_config(source="embedded", num_examples=10_000, num_train=7_500)
    )
    assert host.source == "embedded"
    assert len(host.test_labels) == 1000
    np.testing.assert_array_equal(np.bincount(host.test_labels), [100] * 10)
    assert (len(host.pool_labels), host.num_train, host.num_val) == (4000, 3000, 1000)
    again = data.load(
        _data_config(source="embedded", num_examples=10_000, num_train=7_500)
    )
    assert again.fingerprint() == host.fingerprint()
    # the pool's first rows are a fair sample, not the file's sorted-by-digit order
    assert len(np.unique(host.pool_labels[:100])) == 10


def test_split_follows_the_seed():
    train_a, val_a = data.split_indices(0, 100, 75)
    train_b, _ = data.split_indices(0, 100, 75)
    train_c, _ = data.split_indices(1, 100, 75)
    assert np.array_equal(train_a, train_b) and not np.array_equal(train_a, train_c)
    assert sorted(np.concatenate([train_a, val_a]).tolist()) == list(range(100))


def test_auto_prefers_path_then_env_then_cache_then_embedded(tmp_path, monkeypatch):
    mlcc, images, labels = write_mlcc_dir(tmp_path / "mlcc")
    host = data.load(_data_config(path=str(mlcc)))
    assert host.source == "mlcc"
    np.testing.assert_array_equal(host.pool_images, images[:30])
    assert host.fingerprint()["num_test"] == 20

    idx = write_idx_dir(
        tmp_path / "idx", images[:40], labels[:40], images[40:], labels[40:]
    )
    monkeypatch.setenv(data.DATA_DIR_ENV, str(idx))
    host_idx = data.load(_data_config())
    assert host_idx.source == "idx"
    assert (
        host_idx.fingerprint()["content_sha256"] == host.fingerprint()["content_sha256"]
    )

    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert (
        data.load(_data_config(num_examples=1000, num_train=750)).source == "embedded"
    )


def test_protocol_errors(tmp_path):
    mlcc, _, _ = write_mlcc_dir(tmp_path / "mlcc")
    with pytest.raises(
        DataError, match="has 40 rows, fewer than data.num_examples=100"
    ):
        data.load(_data_config(path=str(mlcc), num_examples=100, num_train=50))
    with pytest.raises(ConfigError, match="num_train=30 leaves no validation"):
        data.load(_data_config(path=str(mlcc), num_train=30))
    with pytest.raises(DataError, match="holds neither"):
        data.load(_data_config(path=str(tmp_path)))
    with pytest.raises(ConfigError, match="data.source='foo'"):
        data.load(_data_config(source="foo"))


def test_device_dataset_is_scaled():
    host = data.load(_data_config(source="embedded", num_examples=1000, num_train=750))
    dataset = data.to_device(host)
    assert isinstance(dataset.pool_x, jax.Array) and dataset.pool_x.dtype == np.float32
    np.testing.assert_allclose(dataset.pool_x, host.pool_images / 255.0, rtol=1e-6)
    assert float(dataset.test_x.max()) <= 1.0


def _parse_count(monkeypatch):
    """Counts how often pandas parses a CSV (the work the cache saves)."""
    import pandas as pd

    calls = []
    read_csv = pd.read_csv

    def counting(*args, **kwargs):
        calls.append(args[0])
        return read_csv(*args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", counting)
    return calls


def test_parsed_arrays_are_cached_by_file_content(tmp_path, monkeypatch):
    folder, images, labels = write_mlcc_dir(tmp_path / "mlcc")
    config = _data_config(path=str(folder))
    calls = _parse_count(monkeypatch)
    first = data.load(config)
    assert len(calls) == 2  # train and test parsed once
    second = data.load(config)
    assert len(calls) == 2  # ... and read back from the cache afterwards
    assert second.fingerprint() == first.fingerprint()
    np.testing.assert_array_equal(second.pool_images, images[:30])

    # An edited file is a new entry: its new contents are parsed, never the stale ones.
    edited = images.copy()
    edited[0, 300] = 7
    write_mlcc_csv(folder / sources.MLCC_TRAIN, edited[:40], labels[:40])
    third = data.load(config)
    assert len(calls) == 3 and third.pool_images[0, 300] == 7


def test_damaged_or_unwritable_cache_only_costs_a_parse(tmp_path, monkeypatch):
    folder, images, _ = write_mlcc_dir(tmp_path / "mlcc")
    config = _data_config(path=str(folder))
    calls = _parse_count(monkeypatch)
    cache = array_cache.entry_path("", "").parent
    before = set(cache.glob("*.npz"))  # the embedded sample's, from write_mlcc_dir
    reference = data.load(config).fingerprint()
    entries = set(cache.glob("*.npz")) - before
    assert len(entries) == 2
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:100])  # truncated
    assert data.load(config).fingerprint() == reference
    assert len(calls) == 4  # both parsed again, and the entries rewritten
    assert data.load(config).fingerprint() == reference and len(calls) == 4

    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MNIST_JAX_CACHE", str(blocked))
    assert data.load(config).fingerprint() == reference


def test_bad_files_are_reported_not_cached(tmp_path):
    folder, _, _ = write_mlcc_dir(tmp_path / "mlcc")
    train = folder / sources.MLCC_TRAIN
    train.write_text(train.read_text().replace(",", ",x", 1))
    for _ in range(2):  # the second attempt fails the same way: nothing was cached
        with pytest.raises(DataError, match="non-numeric cell"):
            data.load(_data_config(path=str(folder)))
