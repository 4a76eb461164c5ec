"""The start-up line names the platform and devices; a GPU host running JAX on its CPU
is told how to install the CUDA extra, unless the user chose the CPU."""

import json
import logging

import pytest

from mnist_jax.platform import devices
from tests import processes


@pytest.fixture
def gpu_host(monkeypatch):
    """A host with an NVIDIA driver, on which the CPU was not asked for."""
    monkeypatch.setattr(devices, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(devices, "cpu_chosen", lambda: False)


def test_gpu_host_running_on_cpu_is_warned(gpu_host, caplog):
    with caplog.at_level(logging.INFO, logger="mnist_jax"):
        devices.log_startup()
    assert caplog.records[0].getMessage().startswith("JAX on cpu: 1 x cpu")
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "pip install -e '.[cuda12]'" in warning.getMessage()


def test_no_warning_without_a_gpu_or_when_cpu_is_chosen(monkeypatch):
    monkeypatch.setattr(devices, "nvidia_gpu_present", lambda: False)
    assert devices.unused_gpu_warning() is None
    monkeypatch.setattr(devices, "nvidia_gpu_present", lambda: True)
    assert devices.cpu_chosen()  # the suite pins JAX_PLATFORMS=cpu
    assert devices.unused_gpu_warning() is None


def test_gpu_detection(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "NVIDIA_DRIVER_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not devices.nvidia_gpu_present()
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    assert devices.nvidia_gpu_present()


def test_sweep_logs_and_records_its_platform(tmp_path):
    result = processes.run(
        "mnist_jax.sweep",
        "--config=configs/sweep_mlp.py:smoke",
        "--config.sweep.optim.learning_rate=(0.1,)",
        "--config.sweep.train.batch_size=(30,)",
        "--config.sweep.seed=(0,)",
        f"--workdir={tmp_path}",
        "--cpu_devices=2",
    )
    assert result.returncode == 0, result.stderr
    first = next(line for line in result.stderr.splitlines() if "JAX on" in line)
    assert "JAX on cpu: 2 x cpu (process 0 of 1)" in first
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["platform"] == "cpu" and len(info["devices"]) == 2
    assert info["device_kind"] == "cpu"
