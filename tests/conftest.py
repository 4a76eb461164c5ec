"""Makes the suite strict and self-contained: rank promotion is an error (catches
(N, 1) vs (N,) label bugs), no test touches the user's cache, figures draw headless.
Also the finished runs the whole session shares, trained once each.

The suite runs on CPU on any host, subprocesses included (`JAX_PLATFORMS=cpu`, set
before JAX is imported): its multi-device tests simulate devices with XLA_FLAGS, which
only the CPU backend honours. Tests marked `accelerator` run only under
`pytest -m accelerator`, and only where a GPU or TPU is present.
"""

import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("MPLBACKEND", "Agg")
# One XLA compilation cache for the whole session, this process and every child it
# starts: most tests compile the same few programs (the smoke configs), many of them in
# a fresh process, and compiling is most of what they cost (the suite took 650 s
# without it, about half that with it). Fresh for each session, and removed after it,
# so no test reads another session's programs.
# (pytest-xdist's workers inherit the first process's.)
_OWN_XLA_CACHE = "MNIST_JAX_TESTS_XLA_CACHE" not in os.environ
if _OWN_XLA_CACHE:
    os.environ["MNIST_JAX_TESTS_XLA_CACHE"] = tempfile.mkdtemp(
        prefix="mnist_jax_tests_xla_"
    )
_XLA_CACHE = os.environ["MNIST_JAX_TESTS_XLA_CACHE"]
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
# What the host offers, before the pin below hides it (for the accelerator tests).
_HOST_PLATFORMS = os.environ.get("JAX_PLATFORMS", "")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from tests import processes  # noqa: E402

REPO = processes.REPO
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
_USER_DATA_DIR = os.environ.get("MNIST_JAX_DATA_DIR")  # read before tests unset it


def pytest_unconfigure(config):
    if _OWN_XLA_CACHE:  # the first process (it outlives the workers), not a worker
        shutil.rmtree(_XLA_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if "accelerator" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="opt-in: pytest -m accelerator on a GPU/TPU host")
    for item in items:
        if "accelerator" in item.keywords:
            item.add_marker(skip)


def accelerator_env() -> dict:
    """`processes.run`'s `env` in which a child process sees the host's GPU or TPU (the
    suite pins CPU), without JAX preallocating most of its memory; skips the test where
    JAX finds no accelerator."""
    env = {
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_FLAGS": None,
        "JAX_PLATFORMS": _HOST_PLATFORMS or None,
    }
    probe = processes.Code("import jax; print(jax.default_backend())")
    backend = processes.run(probe, env=env).stdout.strip()
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


class Run(NamedTuple):
    """A finished run shared by the whole session. Read it, never write into it: a test
    that changes a workdir trains its own or works on a `copy_workdir`. Any change to
    its files is reported as an error when the session ends."""

    workdir: Path
    results: dict  # what train_and_evaluate returned (results.json's contents)


def copy_workdir(run: Run, destination: Path) -> Path:
    """A private copy of a shared run's workdir, for a test that writes into one."""
    return Path(shutil.copytree(run.workdir, destination))


def _files(workdir: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(workdir.rglob("*"))
        if p.is_file()
    }


def _shared_run(tmp_path_factory, name: str, config):
    from mnist_jax.run import train

    # Session fixtures are set up before the per-test isolation above applies.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNIST_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("MNIST_JAX_DATA_DIR", raising=False)
        workdir = tmp_path_factory.mktemp(name)
        results = train.train_and_evaluate(config, workdir)
    before = _files(workdir)
    yield Run(workdir, results)
    after = _files(workdir)
    changed = sorted(
        name
        for name in before.keys() | after.keys()
        if before.get(name) != after.get(name)
    )
    assert not changed, f"a test wrote into the shared run {workdir}: {changed}"


@pytest.fixture(scope="session")
def mlp_smoke_run(tmp_path_factory):
    """`configs/mlp.py:smoke`, trained once."""
    from configs import mlp

    yield from _shared_run(tmp_path_factory, "mlp_smoke", mlp.get_config("smoke"))


@pytest.fixture(scope="session")
def linear_smoke_run(tmp_path_factory):
    """`configs/linear.py:smoke`, trained once."""
    from configs import linear

    yield from _shared_run(tmp_path_factory, "linear_smoke", linear.get_config("smoke"))


@pytest.fixture(scope="session")
def resumable_run(tmp_path_factory):
    """`tests/run_helper.py`'s config (200 steps, 10 periods, dropout), uninterrupted:
    what every interrupted-and-resumed run must equal, bitwise."""
    from tests import run_helper

    yield from _shared_run(tmp_path_factory, "resumable", run_helper.config())
