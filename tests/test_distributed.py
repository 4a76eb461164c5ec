"""One mesh, many devices, many processes: same numbers as one device.

Each multi-device case runs in a subprocess (8 simulated CPU devices, or two processes
joined by jax.distributed on 127.0.0.1), so the suite's own single device is unaffected.
"""

import json
import socket

import numpy as np
import pandas as pd
import pytest

from configs import mlp
from mnist_jax.errors import ConfigError
from mnist_jax.platform import mesh
from mnist_jax.run import checkpoints, train, writers
from tests import processes

RUN = ["--config=configs/mlp.py:smoke", "--config.train.batch_size=32"]
EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
DATA_PARALLEL = "--config.mesh.shape=(8,)"  # a single run's default is one device


def _finish(process, timeout=300):
    result = processes.finish(process, timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_device")
    config = mlp.get_config("smoke")
    config.train.batch_size = 32
    return workdir, train.train_and_evaluate(config, workdir)


def _close(a, b, rel=1e-5):
    """Log losses to float tolerance; accuracies to one example of the 1,000: more
    devices sum a batch's gradients in another order, which can flip the argmax of a
    digit whose two best logits are a rounding error apart."""
    for key in ("val/log_loss", "test/log_loss"):
        assert a[key] == pytest.approx(b[key], rel=rel), key
    for key in ("val/accuracy", "test/accuracy"):
        assert a[key] == pytest.approx(b[key], abs=1.01e-3), key


def test_eight_devices_match_one_and_restore_on_one(tmp_path, one_device):
    _, expected = one_device
    _finish(
        processes.start(
            "mnist_jax.main",
            *RUN,
            DATA_PARALLEL,
            f"--workdir={tmp_path}",
            env=EIGHT_DEVICES,
        )
    )
    results = json.loads((tmp_path / "results.json").read_text())
    _close(results, expected)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["mesh"]["axes"] == {"data": 8} and len(info["mesh"]["devices"]) == 8
    model = checkpoints.restore_model(tmp_path, 20)  # written on 8 devices, read on 1
    reference = checkpoints.restore_model(one_device[0], 20)
    x = np.random.default_rng(0).random((5, 784), np.float32)
    np.testing.assert_allclose(model(x), reference(x), rtol=1e-4, atol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_and_write_once(tmp_path, one_device):
    _, expected = one_device
    port = _free_port()
    started = [
        processes.start(
            "mnist_jax.main",
            *RUN,
            f"--workdir={tmp_path}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )
        for i in range(2)
    ]
    for process in started:
        _finish(process)
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("val/log_loss", "test/log_loss"):
        assert results[key] == pytest.approx(expected[key], rel=1e-5), key
    for key, n in (("val/accuracy", 250), ("test/accuracy", 1000)):
        assert abs(results[key] - expected[key]) <= 1 / n + 1e-6, key  # a tie may flip
    assert [r["step"] for r in writers.read_metrics(tmp_path)] == [
        10,
        20,
    ]  # once, not twice
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["process_count"] == 2 and info["mesh"]["axes"] == {"data": 2}
    assert checkpoints.available_steps(tmp_path) == [5, 10, 20]


def test_sweep_on_eight_devices_matches_one(tmp_path):
    args = [
        "--config=configs/sweep_mlp.py:smoke",
        "--config.sweep.optim.learning_rate=(0.03,0.05,0.1,0.3)",
        "--config.sweep.train.batch_size=(32,)",
        "--config.sweep.seed=(0,1,2,3)",
    ]
    _finish(processes.start("mnist_jax.sweep", *args, f"--workdir={tmp_path / 'one'}"))
    _finish(
        processes.start(
            "mnist_jax.sweep",
            *args,
            f"--workdir={tmp_path / 'eight'}",
            env=EIGHT_DEVICES,
        )
    )
    a = pd.read_csv(tmp_path / "one" / "sweep.csv")
    b = pd.read_csv(tmp_path / "eight" / "sweep.csv")
    assert len(a) == 16
    for column in ("val/log_loss", "test/log_loss", "val/accuracy"):
        np.testing.assert_allclose(a[column], b[column], rtol=1e-4)
    info = json.loads((tmp_path / "eight" / "run_info.json").read_text())
    assert info["mesh"]["axes"] == {"members": 8, "data": 1}


def test_mesh_shapes_and_batch_division():
    one = mesh.make_mesh(())
    assert dict(one.shape) == {"data": 1}
    with pytest.raises(
        ConfigError, match=r"mesh.shape=\(4,\) needs 4 devices; 1 are available"
    ):
        mesh.make_mesh((4,))
    with pytest.raises(ConfigError, match="must be \\(data,\\) or \\(members, data\\)"):
        mesh.make_mesh((1, 1, 1))
    assert dict(mesh.make_sweep_mesh(()).shape) == {"members": 1, "data": 1}
    mesh.check_batch(one, 30)


@pytest.mark.parametrize("num_devices", [4, 8])
def test_default_mesh_runs_the_notebook_batch_on_any_device_count(
    tmp_path, num_devices
):
    flags = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}"}
    _finish(  # batch 30
        processes.start(
            "mnist_jax.main",
            "--config=configs/mlp.py:smoke",
            f"--workdir={tmp_path}",
            env=flags,
        )
    )
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["mesh"]["axes"] == {"data": 1}
    assert len(info["devices"]) == num_devices


def test_batch_that_does_not_divide_the_devices_is_refused(tmp_path):
    result = processes.run(
        "mnist_jax.main",
        "--config=configs/mlp.py:smoke",
        DATA_PARALLEL,
        f"--workdir={tmp_path}",
        env=EIGHT_DEVICES,
    )
    assert result.returncode == 2
    assert (
        "train.batch_size=30 does not divide over the 8 devices"
        in result.stderr.strip().splitlines()[-1]
    )
