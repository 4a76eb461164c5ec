"""Makes the suite strict and self-contained: rank promotion is an error (catches
(N, 1) vs (N,) label bugs), no test touches the user's cache, figures draw headless."""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
_USER_DATA_DIR = os.environ.get("MNIST_JAX_DATA_DIR")  # read before tests unset it


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MNIST_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("MNIST_JAX_DATA_DIR", raising=False)


def real_mnist_dir() -> Path | None:
    """`$MNIST_JAX_DATA_DIR` (as set before the suite) or ../shared/data/mnist, if present."""
    folder = Path(_USER_DATA_DIR or SHARED_MNIST)
    return folder if (folder / "mnist_train_small.csv").is_file() else None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = real_mnist_dir()
    if folder is None:
        pytest.skip(
            f"real MNIST not found: set MNIST_JAX_DATA_DIR or provide {SHARED_MNIST}"
        )
    return folder


def run_module(module: str, *args: str, timeout: float = 120, **kwargs):
    """`python -m module args...` from the repository root, output captured: how the
    tests run the command lines the way a user does."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
