"""Makes the suite strict and self-contained: rank promotion is an error (catches
(N, 1) vs (N,) label bugs), no test touches the user's cache, figures draw headless.

The suite runs on CPU on any host, subprocesses included (`JAX_PLATFORMS=cpu`, set
before JAX is imported): its multi-device tests simulate devices with XLA_FLAGS, which
only the CPU backend honours. Tests marked `accelerator` run only under
`pytest -m accelerator`, and only where a GPU or TPU is present.
"""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
# What the host offers, before the pin below hides it (for the accelerator tests).
_HOST_PLATFORMS = os.environ.get("JAX_PLATFORMS", "")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
_USER_DATA_DIR = os.environ.get("MNIST_JAX_DATA_DIR")  # read before tests unset it


def pytest_collection_modifyitems(config, items):
    if "accelerator" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="opt-in: pytest -m accelerator on a GPU/TPU host")
    for item in items:
        if "accelerator" in item.keywords:
            item.add_marker(skip)


def accelerator_env() -> dict:
    """The environment in which a child process sees the host's GPU or TPU (the suite
    pins CPU), without JAX preallocating most of its memory; skips the test where JAX
    finds no accelerator."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    env.pop("XLA_FLAGS", None)
    if _HOST_PLATFORMS:
        env["JAX_PLATFORMS"] = _HOST_PLATFORMS
    else:
        env.pop("JAX_PLATFORMS")
    backend = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout.strip()
    if backend in ("", "cpu"):
        pytest.skip("no GPU or TPU visible to JAX on this host")
    return env


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
