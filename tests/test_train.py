import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mlp
from mnist_jax import data, plots
from mnist_jax.core import metrics, programs, steps
from mnist_jax.run import checkpoints, loop, schedule, train, writers
from tests import processes

RESULT_KEYS = {
    "val/accuracy",
    "val/log_loss",
    "test/accuracy",
    "test/log_loss",
    "num_steps",
    "train_seconds",
    "warnings",
}
PERIOD_KEYS = {
    "step",
    "train/log_loss",
    "val/log_loss",
    "train/accuracy",
    "val/accuracy",
}


def test_smoke_run_writes_every_workdir_file(mlp_smoke_run):
    workdir, results = mlp_smoke_run
    expected = mlp.get_config("smoke")
    num_steps = expected.train.num_steps
    assert set(results) == RESULT_KEYS
    assert json.loads((workdir / "results.json").read_text()) == results
    assert 0.0 <= results["test/accuracy"] <= 1.0 and results["num_steps"] == num_steps

    written = json.loads((workdir / "config.json").read_text())
    assert written == json.loads(json.dumps(expected.to_dict()))

    rows = writers.read_metrics(workdir)
    assert [r["step"] for r in rows] == schedule.period_ends(
        num_steps, expected.train.num_periods
    )
    assert all(set(r) == PERIOD_KEYS for r in rows)
    assert rows[-1]["val/accuracy"] == pytest.approx(results["val/accuracy"], abs=1e-6)

    info = json.loads((workdir / "run_info.json").read_text())
    assert info["data"]["source"] == expected.data.source
    assert len(info["data"]["content_sha256"]) == 64
    assert (info["data"]["num_train"], info["data"]["num_val"]) == (
        expected.data.num_train,
        expected.data.num_examples - expected.data.num_train,
    )
    assert info["versions"]["jax"] == jax.__version__
    assert info["devices"] and info["wall_seconds"] > 0

    assert list(workdir.glob("events.out.tfevents.*"))
    log_lines = (workdir / "train.log").read_text().splitlines()
    assert f"step {rows[0]['step']}/{num_steps}" in log_lines[0]
    assert "Results: val/accuracy" in log_lines[-1]
    for figure in (
        "log_loss.png",
        "confusion_matrix.png",
        "examples.png",
        "first_layer_weights.png",
    ):
        assert (workdir / figure).read_bytes()[:4] == b"\x89PNG", figure
    assert not list(workdir.glob(".*tmp*"))  # atomic writes leave no temp files


def test_linear_run_draws_its_class_templates(linear_smoke_run, tmp_path):
    """The linear model's figure is its ten class templates: the final weights, one
    28x28 image per digit, pixel for pixel what the drawing of them gives."""
    from matplotlib.image import imread

    workdir = linear_smoke_run.workdir
    kernel = np.asarray(checkpoints.restore_model(workdir).first_layer())
    assert kernel.shape == (784, 10)
    redrawn = plots.save(plots.plot_weight_grid(kernel), tmp_path / "again.png")
    drawn = imread(workdir / "first_layer_weights.png")
    np.testing.assert_array_equal(drawn, imread(redrawn))
    assert drawn.std() > 0  # not a blank image


def test_same_seed_same_numbers(mlp_smoke_run, tmp_path):
    _, first = mlp_smoke_run
    again = train.train_and_evaluate(mlp.get_config("smoke"), tmp_path / "again")
    for key in RESULT_KEYS - {"train_seconds", "warnings"}:
        assert again[key] == first[key], key
    assert writers.read_metrics(tmp_path / "again") == writers.read_metrics(
        mlp_smoke_run.workdir
    )

    other_seed = mlp.get_config("smoke")
    other_seed.seed = 1
    different = train.train_and_evaluate(other_seed, tmp_path / "seed1")
    assert different["val/log_loss"] != first["val/log_loss"]


def test_chunking_does_not_change_training():
    """Per-step randomness comes from the step number, so any chunking is the same run."""
    config = mlp.get_config("smoke")
    config.model.dropout_rate = 0.3
    host = data.load(config.data)
    dataset = data.to_device(host)
    program, state, member = programs.init_run(config, host)
    train_steps = jax.jit(program.train_steps, static_argnums=1)
    orders = loop.EpochOrders(program, jax.jit(program.epoch_order), member)
    whole, _ = train_steps(state, 60, dataset, member, orders(0, 60))  # > 1 epoch
    chunked, done = state, 0
    for length in (7, 18, 1, 25, 9):
        chunked, _ = train_steps(chunked, length, dataset, member, orders(done, length))
        done += length
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def smoke_program():
    config = mlp.get_config("smoke")
    program, state, _ = programs.init_run(config, data.load(config.data))
    return program, state.params


# 23 rows in blocks of 1 (exact), 5 and 10 (with a remainder), 22 (one block and a
# remainder), 23 (exactly one), 24 and 100 (less than one).
@pytest.mark.parametrize("block_rows", [1, 5, 10, 22, 23, 24, 100])
def test_blocked_evaluation_scores_every_row_as_one_pass_would(
    smoke_program, monkeypatch, block_rows
):
    """For any block size, blocks (and a remainder that is not a whole block) change no
    row's score."""
    program, params = smoke_program
    monkeypatch.setattr(steps, "EVAL_BLOCK_ROWS", block_rows)
    num_rows = 23
    rng = np.random.default_rng(block_rows)
    x = jnp.asarray(rng.random((num_rows, 784), np.float32))
    y = jnp.asarray(rng.integers(0, 10, num_rows), jnp.int32)
    # A new function each time: jit must trace with this block size, not reuse a trace.
    values, predictions = jax.jit(lambda p, x, y: program.row_scores(p, x, y))(
        params, x, y
    )
    logits = program.logits(params, x)
    assert set(values) == set(metrics.METRICS)
    for name, metric in metrics.METRICS.items():
        assert values[name].shape == predictions.shape == (num_rows,)
        np.testing.assert_allclose(
            values[name], metric.per_row(logits, y), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(predictions, jnp.argmax(logits, axis=-1))


def test_period_ends_cover_the_run_evenly():
    """Any number of periods up to the steps: that many ends, the last at the last step,
    the periods' lengths the floor or the ceiling of steps / periods."""
    for num_steps in range(1, 61):
        for num_periods in range(1, num_steps + 1):
            ends = schedule.period_ends(num_steps, num_periods)
            assert len(ends) == num_periods and ends[-1] == num_steps
            lengths = np.diff([0, *ends])
            assert set(lengths) <= {
                num_steps // num_periods,
                -(-num_steps // num_periods),
            }, (num_steps, num_periods, ends)


def test_cli_run_leaves_everything_written_after_its_quick_exit(
    tmp_path, mlp_smoke_run
):
    """The CLI skips the interpreter's teardown (`os._exit`): the last async checkpoint,
    the log file and every output must already be complete when it does. Its numbers
    are those of the same config trained from Python."""
    config = mlp.get_config("smoke")
    num_steps = config.train.num_steps
    workdir = tmp_path / "w"
    result = processes.run(
        "mnist_jax.main", "--config=configs/mlp.py:smoke", f"--workdir={workdir}"
    )
    assert result.returncode == 0, result.stderr
    # the requested steps the run reaches, and the final one
    assert checkpoints.available_steps(workdir) == sorted(
        {*(s for s in config.checkpoint.steps if s <= num_steps), num_steps}
    )
    restored = checkpoints.restore_model(workdir, num_steps)  # the final save, whole
    assert restored.first_layer().shape == (784, config.model.hidden_units[0])
    last_line = (workdir / "train.log").read_text().splitlines()[-1]
    assert "Results: val/accuracy" in last_line
    assert writers.read_metrics(workdir) == writers.read_metrics(mlp_smoke_run.workdir)
    results = json.loads((workdir / "results.json").read_text())
    assert {**results, "train_seconds": 0} == {
        **mlp_smoke_run.results,
        "train_seconds": 0,
    }
    for figure in ("log_loss", "confusion_matrix", "examples", "first_layer_weights"):
        assert (workdir / f"{figure}.png").stat().st_size > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.num_steps=0", "train.num_steps=0 must be a positive integer"),
        (
            "--config.train.num_step=5",
            "unknown config field 'train.num_step'; did you mean 'train.num_steps'?",
        ),
        (
            "--config.train.num_steps=abc",
            "--config.train.num_steps=abc: invalid literal",
        ),
        (
            "--config.data.source=auto --config.data.path=/nonexistent/mnist",
            "/nonexistent/mnist: data folder not found",
        ),
        ("--config=configs/missing.py", "cannot load --config: [Errno 2] No such file"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, override, message):
    workdir = tmp_path / "w"
    result = processes.run(
        "mnist_jax.main",
        "--config=configs/mlp.py:smoke",
        f"--workdir={workdir}",
        *override.split(),
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in result.stderr
    assert not workdir.exists() or not any(workdir.iterdir())


def test_a_run_at_chance_level_says_so(tmp_path, caplog):
    config = mlp.get_config("smoke")
    config.optim.learning_rate = 1e6  # finite, but it learns nothing
    config.train.num_steps, config.train.num_periods = 10, 1
    results = train.train_and_evaluate(config, tmp_path)
    assert results["val/accuracy"] < 0.2
    assert results["warnings"] and "chance" in results["warnings"][0]
    assert json.loads((tmp_path / "results.json").read_text())["warnings"]
    assert any(
        "chance" in r.message for r in caplog.records if r.levelname == "WARNING"
    )
