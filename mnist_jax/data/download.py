"""Downloads the notebook's CSV files once into a cache that a bad transfer cannot poison.

A file reaches its cached name only after it arrived whole and passed structural
validation; its sha256 is recorded beside it and checked on every later use.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from mnist_jax.data import readers as sources
from mnist_jax.errors import DataError

log = logging.getLogger(__name__)

MLCC_BASE_URL = "https://download.mlcc.google.com/mledu-datasets/"
_CHUNK_BYTES = 1 << 20


def cache_dir() -> Path:
    """`$MNIST_JAX_CACHE`, else `$XDG_CACHE_HOME/mnist_jax`, else `~/.cache/mnist_jax`."""
    if os.environ.get("MNIST_JAX_CACHE"):
        return Path(os.environ["MNIST_JAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mnist_jax"


def mlcc_cache_dir() -> Path:
    return cache_dir() / "mlcc"


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached_mlcc_dir() -> Path | None:
    """The cache folder if it holds both notebook files, intact; otherwise None."""
    folder = mlcc_cache_dir()
    for name in (sources.MLCC_TRAIN, sources.MLCC_TEST):
        path, checksum = folder / name, _checksum_path(folder / name)
        if not (path.is_file() and checksum.is_file()):
            return None
        if sources.sha256_file(path) != checksum.read_text().split()[0]:
            log.warning("%s does not match its recorded sha256; ignoring it.", path)
            return None
    return folder


def _fetch(url: str, dest: Path, timeout: float) -> None:
    with (
        urllib.request.urlopen(url, timeout=timeout) as response,
        open(dest, "wb") as f,
    ):
        expected = response.headers.get("Content-Length")
        received = 0
        while block := response.read(_CHUNK_BYTES):
            f.write(block)
            received += len(block)
    if expected is not None and received != int(expected):
        raise DataError(f"{url}: transfer cut short ({received} of {expected} bytes)")


def download_file(
    url: str,
    dest: Path,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Fetches `url` to `dest` atomically, validating it as an MLCC CSV before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp, timeout)
            sources.read_mlcc_csv(tmp)
            checksum = sources.sha256_file(tmp)
            os.replace(tmp, dest)
            _checksum_path(dest).write_text(f"{checksum}  {dest.name}\n")
            log.info("Downloaded %s (sha256 %s).", dest, checksum)
            return dest
        except (urllib.error.URLError, OSError, DataError) as e:
            last_error = str(getattr(e, "reason", None) or e).splitlines()[0]
            log.warning("Download of %s failed (%s).", url, last_error)
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not download {url} after {retries} tries ({last_error}); offline? "
        "Use local files instead: --config.data.path=DIR (a folder holding "
        f"{sources.MLCC_TRAIN} and {sources.MLCC_TEST}) or --config.data.source=embedded"
    )


def download_mlcc(base_url: str = MLCC_BASE_URL, **kwargs) -> Path:
    """Makes sure both notebook files are cached and returns their folder."""
    folder = mlcc_cache_dir()
    if cached_mlcc_dir() is not None:
        return folder
    for name in (sources.MLCC_TRAIN, sources.MLCC_TEST):
        download_file(base_url.rstrip("/") + "/" + name, folder / name, **kwargs)
    return folder
