"""Kill at any moment and lose nothing; one run per workdir; divergence stops cleanly."""

import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mnist_jax import checkpoints, train, writers
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import TrainingDiverged
from tests.conftest import REPO
from tests.run_helper import config as helper_config

HELPER = REPO / "tests" / "run_helper.py"


def _numbers(results):
    return {k: v for k, v in results.items() if k != "train_seconds"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, train.train_and_evaluate(helper_config(), workdir)


def _same_as_uninterrupted(workdir, uninterrupted):
    reference, expected = uninterrupted
    resumed = train.train_and_evaluate(helper_config(), workdir)
    assert _numbers(resumed) == _numbers(expected)
    assert writers.read_metrics(workdir) == writers.read_metrics(reference)
    a = checkpoints.restore_model(workdir, 200)
    b = checkpoints.restore_model(reference, 200)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    leftovers = [
        p.name for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit()
    ]
    assert leftovers == [], leftovers  # Orbax's unfinished temp folders are cleaned


@pytest.mark.parametrize(
    "mode, step", [("kill_after_save", 100), ("kill_mid_metrics", 140)]
)
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted, mode, step):
    result = subprocess.run(
        [sys.executable, str(HELPER), str(tmp_path), mode, str(step)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    _same_as_uninterrupted(tmp_path, uninterrupted)


def _start(workdir, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_jax.main",
            "--config=configs/mlp.py:smoke",
            f"--workdir={workdir}",
            "--config.train.num_steps=200",
            "--config.train.num_periods=10",
            "--config.model.dropout_rate=0.1",
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_metrics(workdir, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (
            writers.read_metrics(workdir)
            if (workdir / "metrics.jsonl").exists()
            else []
        ):
            return
        time.sleep(0.005)
    raise AssertionError("the run never wrote a metrics row")


def test_sigkill_mid_chunk_then_resume(tmp_path, uninterrupted):
    process = _start(tmp_path)
    _wait_for_metrics(tmp_path, process)
    process.kill()
    process.wait(timeout=60)
    _same_as_uninterrupted(tmp_path, uninterrupted)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_and_exit(tmp_path, uninterrupted, signum):
    process = _start(tmp_path)
    _wait_for_metrics(tmp_path, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 128 + signum
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: interrupted by {signal.Signals(signum).name} at step "
    )
    assert "run the same command to resume" in last and "Traceback" not in stderr
    step = int(last.split(" at step ")[1].split(":")[0])
    assert step in checkpoints.available_steps(tmp_path)
    _same_as_uninterrupted(tmp_path, uninterrupted)


def test_workdir_lock_names_the_holder_and_stale_locks_are_free(tmp_path):
    workdir_lib.prepare(tmp_path)
    with workdir_lib.lock(tmp_path):
        process = _start(tmp_path)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert (
        f"is in use by process {__import__('os').getpid()}"
        in stderr.strip().splitlines()[-1]
    )
    assert not (tmp_path / "metrics.jsonl").exists()
    # the holder is gone (its lock released with it): the next run proceeds
    (tmp_path / ".lock").write_text("process 999999 on elsewhere since long ago\n")
    process = _start(tmp_path)
    process.communicate(timeout=180)
    assert process.returncode == 0


def test_divergence_stops_naming_the_step(tmp_path):
    config = helper_config()
    config.optim.learning_rate = 1e30
    config.optim.clip_norm = 1e30
    with pytest.raises(
        TrainingDiverged,
        match=r"became NaN/inf at step \d+ .*Lower --config.optim.learning_rate",
    ):
        train.train_and_evaluate(config, tmp_path)
    for step in checkpoints.available_steps(tmp_path):
        model = checkpoints.restore_model(tmp_path, step)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(model))
    assert not (tmp_path / "results.json").exists()
    assert all(
        np.isfinite(v) for row in writers.read_metrics(tmp_path) for v in row.values()
    )


def test_memory_stays_flat_over_periods(tmp_path):
    result = subprocess.run(
        [sys.executable, str(HELPER), str(tmp_path), "rss", "0", "2000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rss = [
        json.loads(line)["rss_mb"]
        for line in result.stdout.splitlines()
        if line.startswith("{")
    ]
    assert len(rss) == 20
    assert rss[-1] <= 1.10 * rss[1], rss
