"""Kill at any moment and lose nothing; one run per workdir; divergence stops cleanly."""

import dataclasses
import json
import os
import re
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import data
from mnist_jax.core import programs
from mnist_jax.errors import TrainingDiverged
from mnist_jax.run import checkpoints, loop, train, writers
from mnist_jax.run import workdir as workdir_lib
from tests import processes
from tests.run_helper import config as helper_config

HELPER = processes.REPO / "tests" / "run_helper.py"


def _numbers(results):
    return {k: v for k, v in results.items() if k != "train_seconds"}


def _same_as_uninterrupted(workdir, resumable_run):
    reference, expected = resumable_run
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
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, resumable_run, mode, step):
    result = processes.run(HELPER, str(tmp_path), mode, str(step), timeout=180)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    _same_as_uninterrupted(tmp_path, resumable_run)


def _start(workdir):
    """The CLI run of `run_helper.config()`, in the background."""
    config = helper_config()
    return processes.start(
        "mnist_jax.main",
        "--config=configs/mlp.py:smoke",
        f"--workdir={workdir}",
        f"--config.train.num_steps={config.train.num_steps}",
        f"--config.train.num_periods={config.train.num_periods}",
        f"--config.model.dropout_rate={config.model.dropout_rate}",
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


def test_sigkill_mid_chunk_then_resume(tmp_path, resumable_run):
    process = _start(tmp_path)
    _wait_for_metrics(tmp_path, process)
    process.kill()
    processes.finish(process, timeout=60)
    _same_as_uninterrupted(tmp_path, resumable_run)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_and_exit(tmp_path, resumable_run, signum):
    """The signal arrives at a known step (the process sends it to itself once step
    60's period is logged, mid-run), so an ignored signal fails instead of racing the
    run's end: the run saves at step 60, which is no checkpoint step, and exits."""
    config = helper_config()
    name = signal.Signals(signum).name
    result = processes.run(
        processes.REPO / "tests" / "preempt_helper.py",
        "mnist_jax.main",
        f"60:{name[3:]}",
        "--config=configs/mlp.py:smoke",
        f"--workdir={tmp_path}",
        f"--config.train.num_steps={config.train.num_steps}",
        f"--config.train.num_periods={config.train.num_periods}",
        f"--config.model.dropout_rate={config.model.dropout_rate}",
        timeout=180,
    )
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: interrupted by {name} at step 60: "), last
    assert "run the same command to resume" in last
    assert "Traceback" not in result.stderr
    assert 60 not in config.checkpoint.steps
    assert 60 in checkpoints.available_steps(tmp_path)
    _same_as_uninterrupted(tmp_path, resumable_run)


def test_workdir_lock_names_the_holder_and_stale_locks_are_free(tmp_path):
    workdir_lib.prepare(tmp_path)
    with workdir_lib.lock(tmp_path):
        result = processes.finish(_start(tmp_path), timeout=120)
    assert result.returncode == 2
    assert (
        f"is in use by process {os.getpid()}" in result.stderr.strip().splitlines()[-1]
    )
    assert not (tmp_path / "metrics.jsonl").exists()
    # the holder is gone (its lock released with it): the next run proceeds
    (tmp_path / ".lock").write_text("process 999999 on elsewhere since long ago\n")
    result = processes.finish(_start(tmp_path), timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]


DIVERGED = r"became NaN/inf at step (\d+) .*Lower --config.optim.learning_rate"


def _assert_nothing_bad_kept(workdir, config, diverged_at):
    """Every checkpoint is from before `diverged_at` and restores, params and optimizer
    state both, to finite numbers; no results; every metrics row finite."""
    kept = checkpoints.available_steps(workdir)
    assert all(step < diverged_at for step in kept), (kept, diverged_at)
    _, state, _ = programs.init_run(config, data.load(config.data))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    with checkpoints.Checkpointer(workdir, read_only=True) as checkpointer:
        for step in kept:
            params, opt_state, metadata = checkpointer.restore(step, abstract)
            assert metadata["step"] == step
            leaves = jax.tree.leaves((params, opt_state))
            assert leaves and all(np.isfinite(x).all() for x in leaves), step
    assert not (workdir / "results.json").exists()
    rows = writers.read_metrics(workdir)
    assert all(row["step"] < diverged_at for row in rows)
    assert all(np.isfinite(v) for row in rows for v in row.values())
    return kept


def test_divergence_stops_naming_the_step(tmp_path):
    """lr=1e30 overflows at step 2, before the first save: nothing is kept."""
    config = helper_config()
    config.optim.learning_rate = 1e30
    config.optim.clip_norm = 1e30
    with pytest.raises(TrainingDiverged, match=DIVERGED) as error:
        train.train_and_evaluate(config, tmp_path)
    assert "last good checkpoint: none yet" in str(error.value)
    step = int(re.search(DIVERGED, str(error.value)).group(1))
    assert _assert_nothing_bad_kept(tmp_path, config, step) == []


def _learning_rate_jumps(monkeypatch, at_step: int, learning_rate: float):
    """From `at_step` on, the run's compiled chunks train with `learning_rate`.

    Adagrad with TF1's clip is hard to diverge slowly: a learning rate either overflows
    at step 2 or never (a scan of 1e3-1e38, sum or mean loss, clip 1e-3-1e30, MLP and
    linear). A jump mid-run is the honest way to a divergence after saves; the
    detection, the discarded chunk and the saves are the package's own."""
    train_chunks = loop.train_chunks

    def with_jump(config, trainer, *rest):
        def train(length):
            compiled = trainer.train(length)

            def jumped(state, pool, member, orders):
                if int(state.step) >= at_step:
                    rate = member.learning_rate
                    member = member._replace(
                        learning_rate=jax.device_put(
                            jnp.asarray(learning_rate, rate.dtype), rate.sharding
                        )
                    )
                return compiled(state, pool, member, orders)

            return jumped

        jumping = dataclasses.replace(trainer, train=train)
        return train_chunks(config, jumping, *rest)

    monkeypatch.setattr(loop, "train_chunks", with_jump)


def test_divergence_after_saves_keeps_only_good_checkpoints(tmp_path, monkeypatch):
    """Trains finitely to step 100 (saving on the way), then diverges in the middle of
    a chunk: the error names the step and the last good save, and no state from that
    chunk is saved."""
    config = helper_config()  # saves at 5, 10, 20 and every period end (20, 40, ...)
    _learning_rate_jumps(monkeypatch, at_step=100, learning_rate=1e30)
    with pytest.raises(TrainingDiverged, match=DIVERGED) as error:
        train.train_and_evaluate(config, tmp_path)
    step = int(re.search(DIVERGED, str(error.value)).group(1))
    kept = _assert_nothing_bad_kept(tmp_path, config, step)
    assert kept and kept[0] < step  # really after a save, so the test cannot degrade
    assert kept == [*config.checkpoint.steps, 100]  # the kept ones and the latest
    assert 100 + 1 < step <= 120  # inside the next chunk, after a finite step
    assert "last good checkpoint: step 100" in str(error.value)
    assert [row["step"] for row in writers.read_metrics(tmp_path)][-1] == 100


def test_memory_stays_flat_over_periods(tmp_path):
    result = processes.run(HELPER, str(tmp_path), "rss", "0", "2000", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rss = [
        json.loads(line)["rss_mb"]
        for line in result.stdout.splitlines()
        if line.startswith("{")
    ]
    assert len(rss) == 20
    assert rss[-1] <= 1.10 * rss[1], rss
