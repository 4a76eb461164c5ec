"""The data layer: `load(config.data)` gives the host's `HostData`, `to_device` its
device copy; data sets are registered in `sources`, read by `readers`, downloaded by
`download` and cached as arrays by `array_cache`."""

from mnist_jax.data.dataset import (
    Dataset,
    HostData,
    pool_spec,
    split_indices,
    to_device,
)
from mnist_jax.data.readers import NUM_CLASSES
from mnist_jax.data.sources import (
    DATA_DIR_ENV,
    SOURCES,
    Source,
    load,
    resolve,
    split_sizes,
)

__all__ = [
    "DATA_DIR_ENV",
    "SOURCES",
    "Dataset",
    "HostData",
    "NUM_CLASSES",
    "Source",
    "load",
    "pool_spec",
    "resolve",
    "split_indices",
    "split_sizes",
    "to_device",
]
