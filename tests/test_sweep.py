import json
import logging
import math
import shutil

import jax
import numpy as np
import pandas as pd
import pytest
from flax import nnx
from ml_collections import ConfigDict

from configs import sweep_linear, sweep_mlp
from mnist_jax.analysis import diagnostics, reports
from mnist_jax.analysis import runs as analysis
from mnist_jax.config import schema as config_schema
from mnist_jax.errors import ConfigError, UserError
from mnist_jax.run import checkpoints, identity, train, writers
from mnist_jax.run import workdir as workdir_lib
from mnist_jax.sweep import grid, groups, runner, sizing
from mnist_jax.sweep import members as sweep_members
from tests import processes
from tests.processes import REPO


def _small_sweep():
    config = sweep_mlp.get_config("smoke")
    config.model.dropout_rate = 0.1
    config.sweep.optim.learning_rate = (0.03, 0.1)
    config.sweep.train.batch_size = (30,)
    config.sweep.seed = (0, 1)
    return config


def _smoke_sweep_on_two_devices(workdir, *overrides: str) -> None:
    """`python -m mnist_jax.sweep` of the smoke sweep with `overrides`, its members
    sharded over two CPU devices (as on a 2-core machine by default)."""
    result = processes.run(
        "mnist_jax.sweep",
        "--config=configs/sweep_mlp.py:smoke",
        f"--workdir={workdir}",
        *overrides,
        "--cpu_devices=2",
    )
    assert result.returncode == 0, result.stderr
    run_info = json.loads((workdir / "run_info.json").read_text())
    assert run_info["mesh"]["axes"]["members"] == 2


@pytest.mark.parametrize("module", [sweep_mlp, sweep_linear])
def test_grid_is_the_product_of_the_axes(module):
    config = module.get_config()
    swept = grid.axes(config)
    members = grid.expand(config)
    assert len(members) == math.prod(len(values) for values in swept.values())
    assert len({json.dumps(h, sort_keys=True) for h, _ in members}) == len(members)
    for hparams, member in members:
        assert set(hparams) == set(swept) and "sweep" not in member
        for name, value in hparams.items():
            assert dict(config_schema.leaves(member))[name] == value, name
    # seeds, learning rates and clip norms are traced: they share a program
    keys = {grid.group_key(c) for _, c in members}
    assert len(keys) == math.prod(
        len(values) for name, values in swept.items() if name not in grid.TRACED_FIELDS
    )


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    return workdir, runner.run_sweep(_small_sweep(), workdir)


def test_members_match_single_runs(smoke_sweep, tmp_path):
    _, rows = smoke_sweep
    for row, (_, member) in zip(rows, grid.expand(_small_sweep()), strict=True):
        if row["member"] not in (1, 2):
            continue
        single = train.train_and_evaluate(member, tmp_path / str(row["member"]))
        for key in runner.RESULT_KEYS:
            assert row[key] == single[key], key


def test_members_equal_their_single_runs_bitwise_at_the_default_layout(tmp_path):
    """On one CPU device per core (here 2) with 8 members per device, every member
    computes what the single run of its config computes, to the bit: its metrics, its
    results and its last checkpoint. Two things made members drift: XLA:CPU summing
    some shapes with YNNPACK (`startup.CPU_REPRODUCIBLE_OPTIONS`) and 1 / sqrt rounding
    unlike rsqrt in the sharded program (`optim.clip_factor`)."""
    workdir = tmp_path / "sweep"
    _smoke_sweep_on_two_devices(
        workdir,
        "--config.sweep.optim.learning_rate=(0.01,0.03,0.1,0.3)",
        "--config.sweep.train.batch_size=(30,100)",
        "--config.sweep.seed=(0,1,2,3)",
    )
    blocks = sorted(p.name for p in (workdir / sweep_members.BLOCKS_DIR).iterdir())
    assert [name.split("-")[1] for name in blocks] == ["n16", "n16"]  # 8 per device
    for index in (0, 13, 18, 31):  # both groups (batch 30 and 100), first and last
        member = sweep_members.folder(workdir, index)
        single = tmp_path / f"single-{index}"
        results = train.train_and_evaluate(identity.read_config(member), single)
        member_results = json.loads((member / "results.json").read_text())
        for key in ("train_seconds",):
            results.pop(key), member_results.pop(key)
        assert member_results == results, index
        assert writers.read_metrics(member) == writers.read_metrics(single), index
        step = checkpoints.available_steps(single)[-1]
        a = checkpoints.restore_model(member, step)
        b = checkpoints.restore_model(single, step)
        for x, y in zip(
            jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), strict=True
        ):
            np.testing.assert_array_equal(x, y)


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
            assert grid.expand(module.get_config(arg))


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
        grid.expand(config)


def test_no_axes_is_one_member_the_config_itself():
    config = config_schema.default_config()
    [(hparams, member)] = grid.expand(config)
    assert hparams == {} and member.to_dict() == config.to_dict()


@pytest.mark.parametrize("per_device", [1, 3, 8])
def test_block_layout(per_device):
    """For any cap, members and shards: equal blocks that hold every member, a multiple
    of the shards, at most the cap per device, none empty, and no more than needed."""
    for num_shards in (1, 2, 3, 8):
        for num_members in range(1, 130):
            blocks, size = groups.block_layout(num_members, num_shards, per_device)
            case = (num_members, num_shards, blocks, size)
            assert blocks * size >= num_members, case
            assert size % num_shards == 0 and size // num_shards <= per_device, case
            assert (blocks - 1) * size < num_members, case  # no block all padding
            # one block fewer, even full to the cap, could not hold them all
            assert (blocks - 1) * per_device * num_shards < num_members, case


def test_blocks_give_the_same_members(smoke_sweep, tmp_path, monkeypatch):
    _, rows = smoke_sweep
    monkeypatch.setattr(sizing, "CACHE_MEMBERS_PER_DEVICE", 3)  # 2 blocks of 2
    blocked = runner.run_sweep(_small_sweep(), tmp_path)
    for a, b in zip(rows, blocked, strict=True):
        for key in runner.RESULT_KEYS:
            assert a[key] == b[key], key


def test_cli_shards_members_over_one_cpu_device_per_core(smoke_sweep, tmp_path):
    """`python -m mnist_jax.sweep` splits the CPU into devices (here 2) and shards the
    members over them; each member's numbers stay those of the 1-device sweep, bitwise."""
    workdir = tmp_path / "cli"
    _smoke_sweep_on_two_devices(
        workdir,
        "--config.model.dropout_rate=0.1",
        "--config.sweep.optim.learning_rate=(0.03,0.1)",
        "--config.sweep.train.batch_size=(30,)",
        "--config.sweep.seed=(0,1)",
    )
    table = pd.read_csv(workdir / "sweep.csv")
    _, rows = smoke_sweep
    for row, (_, cli_row) in zip(rows, table.iterrows(), strict=True):
        for key in runner.RESULT_KEYS:
            assert cli_row[key] == row[key], key


def _tensorboard_events(folder) -> tuple[dict, dict]:
    """The scalars ({(tag, step): value}) and the hparams session's values of the
    TensorBoard event files in `folder`, read from their records (length, CRC, event,
    CRC) with tensorboardX's protos."""
    import struct

    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    scalars, hparams = {}, {}
    for path in folder.glob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    plugin = HParamsPluginData.FromString(
                        value.metadata.plugin_data.content
                    )
                    for name, v in plugin.session_start_info.hparams.items():
                        hparams[name] = v.number_value
                elif value.HasField("simple_value"):
                    scalars[value.tag, event.step] = value.simple_value
    return scalars, hparams


def test_member_folders_are_single_runs(smoke_sweep, tmp_path):
    """Every reader of a run reads a member's folder unchanged."""
    workdir, rows = smoke_sweep
    member = sweep_members.folder(workdir, 1)
    assert checkpoints.available_steps(member) == [5, 10, 20]
    config = identity.read_config(member)
    assert config.optim.learning_rate == rows[1]["optim.learning_rate"]
    assert config.seed == rows[1]["seed"] and config.data.source == "embedded"
    results = json.loads((member / "results.json").read_text())
    assert {k: results[k] for k in runner.RESULT_KEYS} == {
        k: rows[1][k] for k in runner.RESULT_KEYS
    }
    assert writers.read_metrics(member) == rows[1]["history"]
    # TensorBoard: the history's scalars at their steps, and the member's hparams
    # session with its final scores (`tensorboard --logdir=SWEEP` compares them).
    scalars, hparams = _tensorboard_events(member)
    for row in rows[1]["history"]:
        for name, value in row.items():
            if name != "step":
                assert scalars[name, row["step"]] == pytest.approx(value, rel=1e-6)
    assert hparams == {
        "optim.learning_rate": rows[1]["optim.learning_rate"],
        "train.batch_size": rows[1]["train.batch_size"],
        "seed": rows[1]["seed"],
    }
    assert scalars["hparam/val/accuracy", 0] == pytest.approx(rows[1]["val/accuracy"])

    # One Orbax checkpoint per block and step holds its members; the folder links it.
    assert not (member / checkpoints.CHECKPOINT_DIR).exists()
    blocks = list((workdir / sweep_members.BLOCKS_DIR).iterdir())
    assert 0 < len(blocks) < len(rows)
    model = checkpoints.restore_model(member, 10)
    run = analysis.load_run(member)
    assert run.steps == [5, 10, 20]
    final = run.scores(run.params_at(20), "val")
    assert final["val/accuracy"] == pytest.approx(rows[1]["val/accuracy"], abs=1e-6)
    assert model(run.split("val")[0]).shape == (250, 10)

    evolution = reports.weight_evolution(member, out=tmp_path / "evolution")
    assert [row["step"] for row in evolution.rows] == [5, 10, 20]
    confusion = reports.confusion_report(member, out=tmp_path / "confusion")
    assert (confusion.folder / "confusion_matrix_step20_val.csv").is_file()
    other = sweep_members.folder(workdir, 2)
    comparison = reports.compare_runs([member, other], out=tmp_path / "comparison")
    assert [row["val/accuracy"] for row in comparison.rows] == [
        rows[1]["val/accuracy"],
        rows[2]["val/accuracy"],
    ]


def test_members_analysed_together_read_their_block_once(smoke_sweep, tmp_path):
    """With `analysis.Shared`, the second member of a block takes its parameters from
    the block checkpoint the first one read: it still reads right after the block's
    files are gone, where a member read alone fails."""
    workdir, rows = smoke_sweep
    copy = tmp_path / "sweep"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(".lock"))
    folders = [sweep_members.folder(copy, i) for i in range(len(rows))]
    blocks = [checkpoints.read_links(f)[0]["relative"] for f in folders]
    first, second = [f for f, b in zip(folders, blocks, strict=True) if b == blocks[0]][
        :2
    ]
    alone = analysis.load_run(second).params_at(20)

    shared = analysis.Shared()
    analysis.load_run(first, shared=shared).params_at(20)
    view = analysis.load_run(second, shared=shared)
    shutil.rmtree(second / blocks[0] / checkpoints.CHECKPOINT_DIR / "20" / "params")
    together = view.params_at(20)
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(alone), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="at step 20 in .* cannot be read \\(KeyError"):
        analysis.load_run(second).params_at(20)


def test_member_folder_resumes_as_a_single_run(smoke_sweep, tmp_path, caplog):
    workdir, rows = smoke_sweep
    copy = tmp_path / "member"
    shutil.copytree(sweep_members.folder(workdir, 1), copy)
    config = identity.read_config(copy)
    config.train.num_steps = 30
    caplog.set_level(logging.INFO, logger="mnist_jax")
    train.train_and_evaluate(config, copy)
    assert "Resuming from the checkpoint at step 20." in caplog.text
    assert [row["step"] for row in writers.read_metrics(copy)] == [10, 20, 30]


def test_a_single_run_or_another_sweep_is_refused(smoke_sweep, tmp_path):
    workdir, _ = smoke_sweep
    other = _small_sweep()
    other.sweep.optim.learning_rate = (0.01,)
    with pytest.raises(UserError, match="holds a sweep of another config") as error:
        runner.run_sweep(other, workdir)
    assert "sweep.optim.learning_rate ([0.03, 0.1] -> [0.01])" in str(error.value)
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text(
        json.dumps(config_schema.default_config().to_dict())
    )
    with pytest.raises(UserError, match="holds a single run, not a sweep"):
        runner.run_sweep(_small_sweep(), single)


def test_a_locked_folder_is_refused(tmp_path):
    with workdir_lib.lock(tmp_path), pytest.raises(UserError, match="is in use by"):
        runner.run_sweep(_small_sweep(), tmp_path)


def test_numbers_read_correctly_in_tables():
    table = writers.markdown_table(
        [{"lr": 3e-05, "big": 1e30, "accuracy": 0.95163, "zero": 0.0, "n": 30}]
    )
    assert table.splitlines()[-1] == "| 3e-05 | 1e+30 | 0.9516 | 0.0000 | 30 |"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("model.hidden_unit=((50,),)", "did you mean 'model.hidden_units'"),
        ("optim.learning_rate", "expected NAME=VALUES"),
        ("optim.learning_rate=0.1", "VALUES must be a non-empty tuple"),
        ("optim.learning_rate=(", "VALUES must be a non-empty tuple"),
        ("optim.learning_rate=()", "VALUES must be a non-empty tuple"),
    ],
)
def test_bad_axis_flags_are_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        grid.add_axes(sweep_mlp.get_config("smoke"), [spec])


def test_any_field_is_an_axis_from_the_command_line(tmp_path):
    """`--axis` sweeps a field the config file does not; a diverging member is named
    with its step; the console ends with the table, the best setting and the paths."""
    workdir = tmp_path / "cli"
    result = processes.run(
        "mnist_jax.sweep",
        "--config=configs/mlp.py:smoke",
        f"--workdir={workdir}",
        "--axis=model.hidden_units=((8,), (16, 16))",
        "--axis=optim.learning_rate=(0.1, 1e30)",
        "--cpu_devices=1",
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(workdir / "sweep.csv")
    assert len(table) == 4 and set(table["model.hidden_units"]) == {"(8,)", "(16, 16)"}
    diverged = table[table["optim.learning_rate"] == 1e30]
    # Known: step 1 moves every weight by ~1e30, so step 2's logits overflow; a single
    # run of either config says "became NaN/inf at step 2" too.
    assert (diverged["diverged_at_step"] == 2).all()
    assert table[table["optim.learning_rate"] == 0.1]["diverged_at_step"].isna().all()
    markdown = (workdir / "sweep.md").read_text()
    assert "| 1e+30 |" in markdown and "diverged at step" in markdown
    lines = result.stderr.splitlines()
    assert any("Settings (mean ± std over seeds)" in line for line in lines)
    assert any("Best setting: {'model.hidden_units'" in line for line in lines)
    assert "sweep.csv" in lines[-1] and "best_config.py" in lines[-1]
    results = json.loads(
        (sweep_members.folder(workdir, 1) / "results.json").read_text()
    )
    assert any("diverged: loss" in w for w in results["warnings"])


def test_diagnostics_of_sweep_members(smoke_sweep, tmp_path):
    """Members chosen by index, labelled by their swept values; a path between two
    seeds of one setting; a member that does not exist is one line."""
    workdir, rows = smoke_sweep
    chosen = [r["member"] for r in rows if r["optim.learning_rate"] == 0.1]
    result = processes.run(
        REPO / "experiments" / "convergence_diagnostics.py",
        f"--workdir={workdir}",
        f"--members={','.join(map(str, chosen))}",
        "--diagnostics=sharpness,per_class,paths",
        "--trace_probes=0",
        f"--out={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "diagnostics.json").read_text())
    labels = [r["label"] for r in found["runs"]]
    assert labels == ["learning_rate=0.1 seed=0", "learning_rate=0.1 seed=1"]
    assert [r["step"] for r in found["between_runs"]] == [5, 10, 20]
    table = pd.read_csv(tmp_path / "diagnostics.csv")
    assert len(table) == 6 and (table["hessian_top_1"] > 0).all()
    # The same member studied as a run of its own gives the same numbers.
    alone = diagnostics.convergence_diagnostics(
        [sweep_members.folder(workdir, chosen[1])],
        stages=("sharpness",),
        settings=diagnostics.Settings(trace_probes=0),
        out=tmp_path / "alone",
    )
    member_rows = table[table["run"] == labels[1]].to_dict("records")
    for mine, theirs in zip(alone.rows, member_rows, strict=True):
        assert mine["hessian_top_1"] == pytest.approx(theirs["hessian_top_1"], rel=1e-6)

    missing = processes.run(
        REPO / "experiments" / "convergence_diagnostics.py",
        f"--workdir={workdir}",
        "--members=99",
        f"--out={tmp_path}",
    )
    assert missing.returncode != 0
    assert (
        missing.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {workdir}: no member 99; members are 0..3")
    )


def test_convergence_across_settings(smoke_sweep, tmp_path):
    workdir, rows = smoke_sweep
    result = processes.run(
        REPO / "experiments" / "sweep_convergence.py",
        f"--workdir={workdir}",
        f"--out={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "convergence.csv")
    # Two learning rates x the kept steps 5, 10, 20; two seeds each.
    assert len(table) == 6 and set(table["step"]) == {5, 10, 20}
    assert (table["seeds"] == 2).all()
    final = table[(table["step"] == 20) & (table["optim.learning_rate"] == 0.1)]
    seeds = [r["val/accuracy"] for r in rows if r["optim.learning_rate"] == 0.1]
    assert final["val/accuracy mean"].item() == pytest.approx(np.mean(seeds))
    assert (table["l2_from_init mean"] > 0).all()
    # Sharpness: the mean over seeds of each member's, as convergence_diagnostics
    # measures it.
    chosen = [r["member"] for r in rows if r["optim.learning_rate"] == 0.1]
    own = diagnostics.convergence_diagnostics(
        [workdir],
        members=chosen,
        stages=("sharpness",),
        settings=diagnostics.Settings(trace_probes=0),
        out=tmp_path / "members",
    ).rows
    for step in (5, 10, 20):
        expected = np.mean([r["hessian_top_1"] for r in own if r["step"] == step])
        row = table[(table["step"] == step) & (table["optim.learning_rate"] == 0.1)]
        assert row["sharpness mean"].item() == pytest.approx(expected, rel=1e-5)
    assert (tmp_path / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "convergence.md").read_text().startswith("| optim.")
