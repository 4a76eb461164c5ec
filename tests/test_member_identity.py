"""A sweep member's checkpoints are its own, wherever the folder goes: a copied member
never reads the weights of a sweep re-run in its place; its own later checkpoints read
when its sweep is gone; a member changed outside its sweep is refused, not mixed into
sweep.csv; a damaged link file is one line."""

import json
import shutil

import numpy as np
import pytest

from configs import sweep_linear
from mnist_jax.core import programs
from mnist_jax.errors import UserError
from mnist_jax.run import checkpoints, identity, train
from mnist_jax.sweep import members as sweep_members
from mnist_jax.sweep import runner

X = np.random.default_rng(0).random((5, 784), np.float32)


def _sweep(workdir, seeds=(0, 1)):
    config = sweep_linear.get_config("smoke")
    config.sweep.optim.learning_rate = (0.1,)
    config.sweep.train.batch_size = (10,)
    config.sweep.seed = seeds
    runner.run_sweep(config, workdir)
    return config


def _logits(workdir, step=20):
    return np.asarray(checkpoints.restore_model(workdir, step)(X))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-member sweep (seeds 0 and 1), and its members' step-20 logits."""
    workdir = tmp_path_factory.mktemp("sweep") / "s"
    _sweep(workdir)
    return workdir, [_logits(sweep_members.folder(workdir, i)) for i in range(2)]


def test_a_copied_member_never_reads_a_re_run_sweeps_weights(tmp_path):
    s, renamed = tmp_path / "s", tmp_path / "s_v1"
    _sweep(s)
    logits = _logits(sweep_members.folder(s, 0))
    s.rename(renamed)
    _sweep(s, seeds=(5, 6))  # a new sweep where the old one was
    copy = tmp_path / "copy"
    shutil.copytree(sweep_members.folder(renamed, 0), copy)
    # The renamed sweep still reads its own (by the relative link).
    np.testing.assert_array_equal(_logits(sweep_members.folder(renamed, 0)), logits)
    # The copy's absolute link points into the new sweep's block.
    assert checkpoints.read_links(copy)[0]["absolute"].startswith(str(s))
    with pytest.raises(UserError) as caught:
        _logits(copy)
    message = str(caught.value)
    assert "\n" not in message
    assert "holds member 0 of another sweep, not this folder's member 0" in message
    assert str(s / "blocks") in message


def test_a_link_to_another_member_or_config_is_refused(finished, tmp_path):
    original, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(sweep_members.folder(original, 0), copy)
    path = copy / checkpoints.LINKS_FILE
    links = json.loads(path.read_text())
    links[0]["index"] = 1  # the slot of member 1
    path.write_text(json.dumps(links))
    with pytest.raises(UserError, match="holds member 1, not this folder's member 0"):
        _logits(copy)
    links[0] |= {"index": 0}
    path.write_text(json.dumps(links))
    config = json.loads((copy / "config.json").read_text())
    config["seed"] = 7  # config.json edited: no longer what the slot trained
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="holds member 0 of another config"):
        _logits(copy)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1}', "expected a JSON array, found dict"),
        ("[3]", "entry 0: not a JSON object"),
        ('[{"relative": "b"}]', "entry 0: 'absolute' is missing or not str"),
        (None, "entry 0: index -1 is not one of the block's 2"),
        (None, "entry 0: index 2 is not one of the block's 2"),
    ],
)
def test_a_damaged_link_file_is_one_line(finished, tmp_path, text, problem):
    original, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(sweep_members.folder(original, 0), copy)
    path = copy / checkpoints.LINKS_FILE
    if text is None:
        links = json.loads(path.read_text())
        links[0]["index"] = int(problem.split("index ")[1].split()[0])
        text = json.dumps(links)
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        checkpoints.restore_model(copy, 20)
    assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_own_checkpoints_read_when_the_sweep_is_gone(finished, tmp_path):
    sweep_dir, copy = tmp_path / "s", tmp_path / "copy"
    _sweep(sweep_dir)
    shutil.copytree(sweep_members.folder(sweep_dir, 0), copy)
    config = identity.read_config(copy)
    config.train.num_steps = 40
    train.train_and_evaluate(config, copy)  # extended as a single run: own step 40
    assert checkpoints.available_steps(copy) == [5, 10, 20, 40]
    np.testing.assert_array_equal(_logits(copy, 20), finished[1][0])  # the block's
    shutil.rmtree(sweep_dir)
    assert checkpoints.available_steps(copy) == [40]
    _logits(copy, 40)
    with pytest.raises(UserError) as caught:
        _logits(copy, 20)
    assert (
        "no checkpoint at step 20; available: 40; the sweep checkpoints it links"
        in (str(caught.value))
    )
    assert str(sweep_dir / "blocks") in str(caught.value)


def test_a_member_extended_outside_the_sweep_is_refused(finished, tmp_path):
    original, _ = finished
    workdir = tmp_path / "s"
    shutil.copytree(original, workdir)
    member = sweep_members.folder(workdir, 0)
    config = identity.read_config(member)
    config.train.num_steps = 40
    train.train_and_evaluate(config, member)
    before = (workdir / "sweep.csv").read_bytes()
    with pytest.raises(UserError) as caught:
        _sweep(workdir)
    assert str(caught.value).startswith(f"{member} was changed outside the sweep: ")
    assert "train.num_steps (40 -> 20)" in str(caught.value)
    assert (workdir / "sweep.csv").read_bytes() == before  # nothing mixed in


def test_a_resumed_block_reads_each_block_checkpoint_once(finished, monkeypatch):
    """Resuming a block restores its members from one read of each block checkpoint
    (its metadata, then its arrays), not one per member."""
    import jax

    from mnist_jax import data
    from mnist_jax.platform import startup

    workdir, logits = finished
    folders = [sweep_members.folder(workdir, i) for i in range(2)]
    config = identity.read_config(folders[0])
    _, state, _ = programs.init_run(config, data.load(config.data))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    manager = startup.orbax().CheckpointManager
    reads = []
    restore = manager.restore
    monkeypatch.setattr(
        manager,
        "restore",
        lambda self, step, **kw: reads.append(step) or restore(self, step, **kw),
    )
    restored, metadatas = sweep_members.restore(folders, 20, abstract)
    assert reads == [20, 20]  # the block's metadata, then its arrays: once each
    assert [m["config"]["seed"] for m in metadatas] == [0, 1]
    assert jax.tree.leaves(restored.params)[0].shape[0] == 2  # both members, stacked


def test_a_damaged_sweep_id_is_one_line(finished, tmp_path):
    workdir = tmp_path / "s"
    shutil.copytree(finished[0], workdir)
    info = json.loads((workdir / "run_info.json").read_text())
    assert len(info["sweep_id"]) == 32
    info["sweep_id"] = "not-an-id"
    (workdir / "run_info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="sweep_id='not-an-id' is not a sweep's id"):
        _sweep(workdir)


def test_a_link_to_a_slot_says_who_holds_it_now(tmp_path):
    """Linking a slot again with another member or sweep replaces the old entry
    (which would otherwise refuse every read as another sweep's)."""
    member = tmp_path / "member"
    member.mkdir()
    block = tmp_path / "blocks" / "m0-n2-s2"
    checkpoints.link(member, block, 0, 2, member="0", sweep_id="a" * 32)
    checkpoints.link(member, block, 0, 2, member="0", sweep_id="a" * 32)
    assert len(checkpoints.read_links(member)) == 1
    checkpoints.link(member, block, 0, 2, member="0", sweep_id="b" * 32)
    (entry,) = checkpoints.read_links(member)
    assert entry["sweep_id"] == "b" * 32
