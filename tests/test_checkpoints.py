import functools
import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from mnist_jax import data
from mnist_jax.analysis import runs as analysis
from mnist_jax.core import programs, steps
from mnist_jax.errors import UserError
from mnist_jax.run import checkpoints, loop, schedule, train, writers
from tests.conftest import copy_workdir
from tests.run_helper import config as resumable_config


def _config(num_steps=200, **checkpoint):
    """The shared `resumable_run`'s config (dropout on, so a resume must also get the
    per-step dropout keys right), with other checkpoint fields if given."""
    config = resumable_config(num_steps)
    for field, value in checkpoint.items():
        config.checkpoint[field] = value
    return config


def _numbers(results):
    return {k: v for k, v in results.items() if k != "train_seconds"}


def test_saved_steps_are_the_requested_ones(resumable_run, tmp_path):
    workdir, _ = resumable_run
    # kept 5, 10, 20 and the final 200; the rolling period-end saves (20, 40, ...) gone
    assert checkpoints.available_steps(workdir) == [5, 10, 20, 200]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
        "10",
        "20",
        "200",
        "5",
    ]

    config = _config(num_steps=20, steps=(3, 15, 50), every_steps=4)
    train.train_and_evaluate(config, tmp_path)
    assert checkpoints.available_steps(tmp_path) == [3, 15, 20]


def test_resumed_run_equals_uninterrupted(resumable_run, tmp_path, monkeypatch):
    workdir, expected = resumable_run
    original = writers.MetricWriter.write_scalars

    def crash_at_60(self, step, scalars):
        if step == 60:
            raise KeyboardInterrupt("simulated interruption")
        original(self, step, scalars)

    monkeypatch.setattr(writers.MetricWriter, "write_scalars", crash_at_60)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(_config(), tmp_path)
    # the kept steps and the latest period end: async saves are not lost
    assert checkpoints.available_steps(tmp_path) == [5, 10, 20, 40]
    monkeypatch.setattr(writers.MetricWriter, "write_scalars", original)

    resumed = train.train_and_evaluate(_config(), tmp_path)
    assert _numbers(resumed) == _numbers(expected)
    assert writers.read_metrics(tmp_path) == writers.read_metrics(workdir)
    a, b = (
        checkpoints.restore_model(tmp_path, 200),
        checkpoints.restore_model(workdir, 200),
    )
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_raising_num_steps_extends_a_finished_run(resumable_run, tmp_path):
    _, expected = resumable_run
    short, full = _config(num_steps=20), _config()
    train.train_and_evaluate(short, tmp_path)
    extended = train.train_and_evaluate(full, tmp_path)
    assert _numbers(extended) == _numbers(expected)
    # the 20-step run evaluated at its period ends; the extension at its own after 20
    evaluated = schedule.period_ends(20, short.train.num_periods)
    evaluated += [
        s for s in schedule.period_ends(200, full.train.num_periods) if s > 20
    ]
    assert [r["step"] for r in writers.read_metrics(tmp_path)] == evaluated


def test_other_config_is_refused_naming_the_fields(resumable_run, tmp_path):
    workdir = copy_workdir(
        resumable_run, tmp_path / "copy"
    )  # the refusal takes its lock

    def snapshot():  # everything but the lock file, which records who holds the workdir
        return {
            p.name: p.stat().st_mtime_ns for p in workdir.iterdir() if p.name != ".lock"
        }

    before = snapshot()
    saved, config = _config(), _config()
    config.optim.learning_rate = saved.optim.learning_rate * 2
    config.seed = saved.seed + 3
    differing = (
        f"differing fields: optim.learning_rate ({saved.optim.learning_rate} -> "
        f"{config.optim.learning_rate}), seed ({saved.seed} -> {config.seed})"
    )
    with pytest.raises(UserError, match=re.escape(differing)):
        train.train_and_evaluate(config, workdir)
    assert snapshot() == before
    with pytest.raises(
        UserError, match="checkpoint at step 200, beyond train.num_steps=20"
    ):
        train.train_and_evaluate(_config(num_steps=20), workdir)


def test_restored_model_predicts_what_the_live_one_did(tmp_path):
    config = _config(num_steps=20)
    host = data.load(config.data)
    dataset = data.to_device(host)
    program, state, member = programs.init_run(config, host)
    state, _ = jax.jit(program.train_steps, static_argnums=1)(
        state, 20, dataset, member, loop.orders_for(program, member, 0, 20)
    )
    live = program.logits(state.params, dataset.test_x)
    tmp_path.joinpath("config.json").write_text(json.dumps(config.to_dict()))
    with checkpoints.Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(20, state, {"step": 20})
    restored = checkpoints.restore_model(tmp_path)
    np.testing.assert_array_equal(restored(dataset.test_x), live)


def test_missing_checkpoints_and_steps_are_named(resumable_run, tmp_path):
    workdir, _ = resumable_run
    with pytest.raises(
        UserError, match="no checkpoint at step 7; available: 5, 10, 20, 200"
    ):
        checkpoints.restore_model(workdir, 7)
    with pytest.raises(UserError, match="no checkpoints"):
        checkpoints.restore_model(tmp_path)
    assert checkpoints.available_steps(tmp_path) == []


@pytest.mark.parametrize(
    "shared", ["mlp_smoke_run", "linear_smoke_run", "resumable_run"]
)
def test_last_checkpoint_scores_what_results_json_says(request, shared):
    """The last checkpoint of a finished run, restored and scored on the run's own
    validation and test rows, gives results.json's numbers: the checkpoint is the model
    the results describe."""
    workdir, _ = request.getfixturevalue(shared)
    results = json.loads((workdir / "results.json").read_text())
    run = analysis.load_run(workdir)
    assert run.steps[-1] == results["num_steps"]
    params = run.params_at(run.steps[-1])
    for split in ("val", "test"):
        scores = run.predict(params, split)
        # float32 means over 250-1,000 rows, summed in another order
        assert scores["log_loss"] == pytest.approx(
            results[f"{split}/log_loss"], rel=1e-5
        ), split
        assert scores["accuracy"] == pytest.approx(
            results[f"{split}/accuracy"], abs=1e-7
        ), split


def test_a_save_keeps_the_metadata_as_it_was_when_saved(tmp_path, monkeypatch):
    """Orbax writes the metadata on a background thread; the history list a run keeps
    appending to must be saved as it was at the save, or a resume from that step would
    replay (and write twice) the periods after it."""
    config = _config()
    _, state, _ = programs.init_run(config, data.load(config.data))
    history = [{"step": 20, "val/accuracy": 0.5}]
    with checkpoints.Checkpointer(tmp_path, keep_steps=(20,)) as checkpointer:
        handed = []  # what Orbax will serialise, whenever its thread gets to it
        json_save = checkpointer._args.JsonSave
        monkeypatch.setattr(
            checkpointer._args,
            "JsonSave",
            lambda item: handed.append(item) or json_save(item),
        )
        checkpointer.save(20, state, {"step": 20, "history": history})
        history.append({"step": 40, "val/accuracy": 0.6})  # the next period, at once
        assert handed[0]["history"] == [{"step": 20, "val/accuracy": 0.5}]
        checkpointer.wait_until_finished()
        saved = checkpointer.restore_metadata(20)
    assert saved["history"] == [{"step": 20, "val/accuracy": 0.5}]


def test_a_member_folder_reads_its_slice_of_the_linked_block_checkpoints(tmp_path):
    """A sweep member's folder reads its member of its blocks' checkpoints as its own:
    every linked block's steps (a later link wins a step), its own checkpoints over
    both; the block is found by its relative path when the whole sweep moves, by its
    absolute one when the member folder is copied out alone; with a block found by
    neither, its own steps still read and the missing ones are named in one line."""
    config = _config(num_steps=20)
    _, state, _ = programs.init_run(config, data.load(config.data))

    def block_state(offset: float, size: int = 3):  # member i: state + offset + i
        stack = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: np.stack([np.asarray(x) + offset + i for i in range(size)]), tree
        )
        return steps.TrainState(state.step, stack(state.params), stack(state.opt_state))

    sweep, member = tmp_path / "sweep", tmp_path / "sweep" / "members" / "4"
    member.mkdir(parents=True)
    blocks = (("a", 0.0, (5, 10), 1), ("b", 100.0, (10, 20), 2))
    for name, offset, saves, slot in blocks:  # member 4 in slot 1, then slot 2
        with checkpoints.Checkpointer(sweep / "blocks" / name, saves) as block:
            for step in saves:
                metadata = {
                    "members": [str(4 - slot + i) for i in range(3)],
                    "metadata": [
                        {"step": step, "block": name, "i": i} for i in range(3)
                    ],
                    "slots": 3,
                    "sweep_id": "s1",
                }
                block.save(step, block_state(offset), metadata)
    link = functools.partial(checkpoints.link, member=member.name, sweep_id="s1")
    link(member, sweep / "blocks" / "a", 1, 3)
    link(member, sweep / "blocks" / "b", 2, 3)
    link(member, sweep / "blocks" / "b", 2, 3)  # said twice, kept once
    assert len(checkpoints.read_links(member)) == 2
    with checkpoints.Checkpointer(member) as own:
        own.save(20, block_state(1000.0, size=1), {"step": 20, "own": True})
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)

    def read(folder):
        with checkpoints.Checkpointer(folder, read_only=True) as checkpointer:
            return checkpointer.all_steps(), {
                step: checkpointer.restore(step, abstract) for step in (5, 10)
            }

    def weight(params):  # a leaf, less the live state's: the offset written
        leaf, live = jax.tree.leaves(params)[0], jax.tree.leaves(state.params)[0]
        return float(np.mean(np.asarray(leaf) - np.asarray(live)))

    saved, restored = read(member)
    assert saved == [5, 10, 20]
    params, opt_state, metadata = restored[5]
    assert weight(params) == pytest.approx(1.0) and metadata == {
        "step": 5,
        "block": "a",
        "i": 1,
    }
    params, opt_state, metadata = restored[10]  # block b, linked later, wins step 10
    assert weight(params) == pytest.approx(102.0) and metadata["block"] == "b"
    assert jax.tree.structure(opt_state) == jax.tree.structure(state.opt_state)
    with checkpoints.Checkpointer(member, read_only=True) as checkpointer:
        assert checkpointer.restore_metadata(20) == {"step": 20, "own": True}
        assert weight(
            checkpointer.restore_params(20, abstract.params)
        ) == pytest.approx(1000.0)

    copied = tmp_path / "copied"  # the sweep still where it was: the absolute path
    shutil.copytree(member, copied)
    assert read(copied)[0] == saved
    moved = tmp_path / "moved"  # the whole sweep moved: the relative path
    sweep.rename(moved)
    assert read(moved / "members" / "4")[0] == saved
    assert checkpoints.available_steps(copied) == [20]  # its own, the sweep gone
    with pytest.raises(
        UserError,
        match=rf"available: 20; the sweep checkpoints it links are not there \({sweep}/blocks/a, {sweep}/blocks/b:",
    ):
        checkpoints.check_step(copied, 5)


def test_block_reads_keep_every_step_of_the_latest_blocks():
    """A sweep's members read in order: every step of a block stays for its next
    member, however many steps it keeps; a third block drops the oldest one."""
    reads, calls = checkpoints.BlockReads(blocks=2), []

    def read(name):
        return lambda: calls.append(name) or (name,)

    a, b, c = Path("a"), Path("b"), Path("c")
    for step in range(20):
        assert reads.get(a, (step, True), read(f"a{step}")) == (f"a{step}",)
    assert reads.get(a, (5, False), read("a5 other items")) == ("a5 other items",)
    for step in range(20):  # the block's next member: nothing read again
        assert reads.get(a, (step, True), read("again")) == (f"a{step}",)
    assert "again" not in calls and len(calls) == 21

    reads.get(b, (0, True), read("b0"))

    def fail():
        raise OSError("gone")

    with pytest.raises(OSError):
        reads.get(c, (0, True), fail)
    reads.get(a, (0, True), read("again"))  # a failed read dropped nothing
    reads.get(c, (0, True), read("c0"))  # a third block: the oldest, a, goes
    reads.get(b, (0, True), read("again"))
    reads.get(a, (0, True), read("a0 again"))
    assert calls[-2:] == ["c0", "a0 again"] and "again" not in calls
