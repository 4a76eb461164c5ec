"""Preemption and locks across processes: a SIGTERM to one process of a multi-host run
stops every process at the same step with one checkpoint, and the run resumes bitwise;
a workdir that cannot be locked is a one-line error on every process, never a hang."""

import errno
import fcntl
import json
import os
import signal
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from mnist_jax import cli
from mnist_jax.errors import UserError
from mnist_jax.run import checkpoints, interrupts
from mnist_jax.run import workdir as workdir_lib
from tests import processes
from tests.test_distributed import _free_port

RUN = [
    "--config=configs/mlp.py:smoke",
    "--config.train.batch_size=32",
    "--config.train.num_steps=40",
    "--config.train.num_periods=4",
    "--config.checkpoint.every_steps=1000",  # saves at 5, 10, 20 and the end only
]
SIGTERM_EXIT = 128 + signal.SIGTERM


def _two_processes(workdir, signal_step=(0, 0), args=RUN):
    port = _free_port()
    started = [
        processes.start(
            processes.REPO / "tests" / "preempt_helper.py",
            "mnist_jax.main",
            str(signal_step[i]),
            *args,
            f"--workdir={workdir}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )
        for i in range(2)
    ]
    outcomes = []
    for process in started:
        result = processes.finish(process)
        outcomes.append((result.returncode, result.stderr))
    return outcomes


def _final_params(workdir):
    model = checkpoints.restore_model(workdir, 40)
    x = np.random.default_rng(0).random((5, 784), np.float32)
    return np.asarray(model(x))


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_bitwise(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    for code, err in _two_processes(uninterrupted):
        assert code == 0, err[-3000:]

    workdir = tmp_path / "preempted"
    outcomes = _two_processes(workdir, signal_step=(0, 30))
    line = processes.same_last_line(outcomes, SIGTERM_EXIT)
    assert line.startswith("error: interrupted by SIGTERM at step 30:"), line
    assert checkpoints.available_steps(workdir) == [5, 10, 20, 30]

    for code, err in _two_processes(workdir):
        assert code == 0, err[-3000:]
    expected = json.loads((uninterrupted / "results.json").read_text())
    resumed = json.loads((workdir / "results.json").read_text())
    for key in ("val/log_loss", "val/accuracy", "test/log_loss", "test/accuracy"):
        assert resumed[key] == expected[key], key
    np.testing.assert_array_equal(_final_params(workdir), _final_params(uninterrupted))


def test_a_held_workdir_stops_every_process_with_one_line(tmp_path):
    workdir_lib.prepare(tmp_path)
    with workdir_lib.lock(tmp_path):
        outcomes = _two_processes(tmp_path)
    line = processes.same_last_line(outcomes, 2)
    assert "is in use by process" in line, line


def test_a_filesystem_without_locks_is_a_one_line_error(tmp_path, monkeypatch):
    def no_locks(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with (
        pytest.raises(UserError, match="does not support file locks") as caught,
        workdir_lib.lock(tmp_path),
    ):
        pass
    assert "\n" not in str(caught.value)


def test_a_signal_agreed_from_another_process_is_not_a_second_one():
    """A preemption reaches every process, a little apart: this process's own SIGTERM
    arriving after it agreed on another's must not count as "asked twice" (which stops
    at once, mid-save); a second one of its own does."""
    with interrupts.deferred() as received:
        received.append(signal.SIGTERM)  # as `agree` adds another process's signal
        os.kill(os.getpid(), signal.SIGTERM)  # then this process's own
        time.sleep(0.05)  # Python runs the handler between bytecodes
        assert received == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # its own, twice: stop now
            time.sleep(1)


def test_one_process_decides_alone():
    received = []
    assert interrupts.agree(received) == []
    received.append(signal.SIGTERM)
    assert interrupts.agree(received) is received


def test_no_cluster_means_no_distributed_runtime(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    for names in cli.CLUSTER_VARIABLES.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    assert cli.cluster_detected() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # one of SLURM's five is not enough
    assert cli.cluster_detected() is None
    for name in cli.CLUSTER_VARIABLES["SLURM"]:
        monkeypatch.setenv(name, "0")
    assert cli.cluster_detected() == "SLURM"
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    assert cli.cluster_detected() == "SLURM"


def test_local_device_ids_reach_the_distributed_runtime(monkeypatch):
    calls = []
    monkeypatch.setattr(
        jax.distributed, "initialize", lambda *a, **k: calls.append((a, k))
    )
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    monkeypatch.setattr(cli, "cluster_detected", lambda: True)
    flag_values = {
        "_COORDINATOR": None,
        "_NUM_PROCESSES": None,
        "_PROCESS_ID": None,
        "_LOCAL_DEVICE_IDS": ["0", "1"],
    }
    for name, value in flag_values.items():
        monkeypatch.setattr(cli, name, SimpleNamespace(value=value))
    cli.init_distributed()  # a detected cluster: JAX fills in the rest
    monkeypatch.setattr(cli, "_COORDINATOR", SimpleNamespace(value="10.0.0.1:1234"))
    cli.init_distributed()  # given by flags
    assert calls == [
        ((), {"local_device_ids": [0, 1]}),
        (("10.0.0.1:1234", None, None), {"local_device_ids": [0, 1]}),
    ]
