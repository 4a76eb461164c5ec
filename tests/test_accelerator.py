"""On a GPU or TPU host, opt in: `pytest -m accelerator`. The run and the sweep use the
accelerator (the rest of the suite is pinned to CPU), and a sweep's members fit in one
block where the device's memory allows."""

import json

import pytest

from tests import processes
from tests.conftest import accelerator_env

pytestmark = pytest.mark.accelerator


def _run(module: str, *args: str) -> None:
    process = processes.run(module, *args, env=accelerator_env(), timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]


def test_run_on_the_accelerator(tmp_path):
    _run("mnist_jax.main", "--config=configs/mlp.py:smoke", f"--workdir={tmp_path}")
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["platform"] in ("gpu", "tpu")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test/accuracy"] > 0.5


def test_sweep_on_the_accelerator(tmp_path):
    _run(
        "mnist_jax.sweep",
        "--config=configs/sweep_mlp.py:smoke",
        "--config.sweep.seed=(0,1,2,3,4,5,6,7)",
        f"--workdir={tmp_path}",
    )
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["platform"] in ("gpu", "tpu")
