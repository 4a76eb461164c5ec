import json

import jax
import numpy as np
import pytest

from configs import mlp
from mnist_jax import checkpoints, data, train, writers
from mnist_jax.errors import UserError


def _config(num_steps=40, **checkpoint):
    config = mlp.get_config("smoke")
    config.train.num_steps = num_steps
    config.train.num_periods = 4
    config.model.dropout_rate = 0.2  # exercises the per-step dropout keys on resume
    for field, value in checkpoint.items():
        config.checkpoint[field] = value
    return config


def _numbers(results):
    return {k: v for k, v in results.items() if k != "train_seconds"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, train.train_and_evaluate(_config(), workdir)


def test_saved_steps_are_the_requested_ones(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    # kept 5, 10, 20 and the final 40; the rolling period-end save at 30 is gone
    assert checkpoints.available_steps(workdir) == [5, 10, 20, 40]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
        "10",
        "20",
        "40",
        "5",
    ]

    config = _config(num_steps=20, steps=(3, 15, 50), every_steps=4)
    train.train_and_evaluate(config, tmp_path)
    assert checkpoints.available_steps(tmp_path) == [3, 15, 20]


def test_resumed_run_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch):
    workdir, expected = uninterrupted
    original = writers.MetricWriter.write_scalars

    def crash_at_30(self, step, scalars):
        if step == 30:
            raise KeyboardInterrupt("simulated interruption")
        original(self, step, scalars)

    monkeypatch.setattr(writers.MetricWriter, "write_scalars", crash_at_30)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(_config(), tmp_path)
    assert checkpoints.available_steps(tmp_path) == [5, 10, 20]  # async saves not lost
    monkeypatch.setattr(writers.MetricWriter, "write_scalars", original)

    resumed = train.train_and_evaluate(_config(), tmp_path)
    assert _numbers(resumed) == _numbers(expected)
    assert writers.read_metrics(tmp_path) == writers.read_metrics(workdir)
    a, b = (
        checkpoints.restore_model(tmp_path, 40),
        checkpoints.restore_model(workdir, 40),
    )
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_raising_num_steps_extends_a_finished_run(uninterrupted, tmp_path):
    _, expected = uninterrupted
    train.train_and_evaluate(_config(num_steps=20), tmp_path)
    extended = train.train_and_evaluate(_config(num_steps=40), tmp_path)
    assert _numbers(extended) == _numbers(expected)
    # the 20-step run evaluated at 5, 10, 15, 20; the extension at its own period ends
    assert [r["step"] for r in writers.read_metrics(tmp_path)] == [
        5,
        10,
        15,
        20,
        30,
        40,
    ]


def test_other_config_is_refused_naming_the_fields(uninterrupted):
    workdir, _ = uninterrupted

    def snapshot():  # everything but the lock file, which records who holds the workdir
        return {
            p.name: p.stat().st_mtime_ns for p in workdir.iterdir() if p.name != ".lock"
        }

    before = snapshot()
    config = _config()
    config.optim.learning_rate = 0.1
    config.seed = 3
    with pytest.raises(
        UserError,
        match=r"differing fields: optim.learning_rate \(0.05 -> 0.1\), seed \(0 -> 3\)",
    ):
        train.train_and_evaluate(config, workdir)
    assert snapshot() == before
    with pytest.raises(
        UserError, match="checkpoint at step 40, beyond train.num_steps=20"
    ):
        train.train_and_evaluate(_config(num_steps=20), workdir)


def test_restored_model_predicts_what_the_live_one_did(tmp_path):
    config = _config(num_steps=20)
    host = data.load(config.data)
    dataset = data.to_device(host)
    program, state, member = train.init_run(config, host)
    state, _ = jax.jit(program.train_steps, static_argnums=1)(
        state, 20, dataset, member
    )
    live = program.logits(state.params, dataset.test_x)
    tmp_path.joinpath("config.json").write_text(json.dumps(config.to_dict()))
    with checkpoints.Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(20, state, {"step": 20})
    restored = checkpoints.restore_model(tmp_path)
    np.testing.assert_array_equal(restored(dataset.test_x), live)


def test_missing_checkpoints_and_steps_are_named(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    with pytest.raises(
        UserError, match="no checkpoint at step 7; available: 5, 10, 20, 40"
    ):
        checkpoints.restore_model(workdir, 7)
    with pytest.raises(UserError, match="no checkpoints"):
        checkpoints.restore_model(tmp_path)
    assert checkpoints.available_steps(tmp_path) == []
