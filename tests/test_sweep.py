import json
import math

import pandas as pd
import pytest
from ml_collections import ConfigDict

from configs import sweep_linear, sweep_mlp
from mnist_jax import config_schema, sizing, sweep, train
from mnist_jax.errors import ConfigError
from tests import processes


def _small_sweep():
    config = sweep_mlp.get_config("smoke")
    config.model.dropout_rate = 0.1
    config.sweep.optim.learning_rate = (0.03, 0.1)
    config.sweep.train.batch_size = (30,)
    config.sweep.seed = (0, 1)
    return config


@pytest.mark.parametrize("module", [sweep_mlp, sweep_linear])
def test_grid_is_the_product_of_the_axes(module):
    config = module.get_config()
    grid = sweep.axes(config)
    members = sweep.expand(config)
    assert len(members) == math.prod(len(values) for values in grid.values())
    assert len({json.dumps(h, sort_keys=True) for h, _ in members}) == len(members)
    for hparams, member in members:
        assert set(hparams) == set(grid) and "sweep" not in member
        for name, value in hparams.items():
            assert dict(config_schema.leaves(member))[name] == value, name
    # seeds, learning rates and clip norms are traced: they share a program
    groups = {sweep.group_key(c) for _, c in members}
    assert len(groups) == math.prod(
        len(values) for name, values in grid.items() if name not in sweep.TRACED_FIELDS
    )


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    return workdir, sweep.run_sweep(_small_sweep(), workdir)


def test_members_match_single_runs(smoke_sweep, tmp_path):
    _, rows = smoke_sweep
    for row, (_, member) in zip(rows, sweep.expand(_small_sweep()), strict=True):
        if row["member"] not in (1, 2):
            continue
        single = train.train_and_evaluate(member, tmp_path / str(row["member"]))
        for key in sweep.RESULT_KEYS:
            assert row[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key


def test_sweep_outputs(smoke_sweep):
    workdir, rows = smoke_sweep
    table = pd.read_csv(workdir / "sweep.csv")
    assert len(table) == 4
    assert {
        "optim.learning_rate",
        "seed",
        "train.batch_size",
        "val/accuracy",
        "test/log_loss",
    } <= set(table.columns)
    assert (workdir / "sweep.md").read_text().startswith("| member |")
    assert (workdir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    best = json.loads((workdir / "best_config.json").read_text())
    means = table.groupby("optim.learning_rate")["val/accuracy"].mean()
    assert best["optim"]["learning_rate"] == means.idxmax()
    namespace = {}
    exec((workdir / "best_config.py").read_text(), namespace)
    config = namespace["get_config"]()
    config_schema.validate(config)
    assert config.optim.learning_rate == means.idxmax()
    assert config.model.dropout_rate == 0.1 and config.model.hidden_units == (100, 100)
    assert len(rows[0]["history"]) == 2


def test_shipped_sweep_configs_expand():
    for module in (sweep_mlp, sweep_linear):
        for arg in (None, "smoke"):
            assert sweep.expand(module.get_config(arg))


@pytest.mark.parametrize(
    "axis, values, message",
    [
        ("optim.learning_rat", (0.1,), "did you mean 'optim.learning_rate'"),
        ("data.num_train", (100,), "data fields cannot be swept"),
        ("optim.clip_norm", (), "must be a non-empty tuple"),
        ("optim.clip_norm", (-1.0,), "optim.clip_norm=-1.0 must be a positive number"),
    ],
)
def test_bad_axes_are_named(axis, values, message):
    config = sweep_mlp.get_config("smoke")
    group, field = axis.split(".")
    with config.unlocked():
        config.sweep[group] = config.sweep.get(group) or ConfigDict()
        config.sweep[group][field] = values
    with pytest.raises(ConfigError, match=message):
        sweep.expand(config)


def test_no_axes_is_one_member_the_config_itself():
    config = config_schema.default_config()
    [(hparams, member)] = sweep.expand(config)
    assert hparams == {} and member.to_dict() == config.to_dict()


@pytest.mark.parametrize("per_device", [1, 3, 8])
def test_block_layout(per_device):
    """For any cap, members and shards: equal blocks that hold every member, a multiple
    of the shards, at most the cap per device, none empty, and no more than needed."""
    for num_shards in (1, 2, 3, 8):
        for num_members in range(1, 130):
            blocks, size = sweep.block_layout(num_members, num_shards, per_device)
            case = (num_members, num_shards, blocks, size)
            assert blocks * size >= num_members, case
            assert size % num_shards == 0 and size // num_shards <= per_device, case
            assert (blocks - 1) * size < num_members, case  # no block all padding
            # one block fewer, even full to the cap, could not hold them all
            assert (blocks - 1) * per_device * num_shards < num_members, case


def test_blocks_give_the_same_members(smoke_sweep, tmp_path, monkeypatch):
    _, rows = smoke_sweep
    monkeypatch.setattr(sizing, "CACHE_MEMBERS_PER_DEVICE", 3)  # 2 blocks of 2
    blocked = sweep.run_sweep(_small_sweep(), tmp_path)
    for a, b in zip(rows, blocked, strict=True):
        for key in sweep.RESULT_KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_cli_shards_members_over_one_cpu_device_per_core(smoke_sweep, tmp_path):
    """`python -m mnist_jax.sweep` splits the CPU into devices (here 2) and shards the
    members over them; each member's numbers stay those of the 1-device sweep."""
    workdir = tmp_path / "cli"
    result = processes.run(
        "mnist_jax.sweep",
        "--config=configs/sweep_mlp.py:smoke",
        f"--workdir={workdir}",
        "--config.model.dropout_rate=0.1",
        "--config.sweep.optim.learning_rate=(0.03,0.1)",
        "--config.sweep.train.batch_size=(30,)",
        "--config.sweep.seed=(0,1)",
        "--cpu_devices=2",
    )
    assert result.returncode == 0, result.stderr
    run_info = json.loads((workdir / "run_info.json").read_text())
    assert run_info["mesh"]["axes"]["members"] == 2
    table = pd.read_csv(workdir / "sweep.csv")
    _, rows = smoke_sweep
    for row, (_, cli_row) in zip(rows, table.iterrows(), strict=True):
        for key in sweep.RESULT_KEYS:
            assert cli_row[key] == pytest.approx(row[key], rel=1e-4, abs=1e-5), key
