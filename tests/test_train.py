import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import linear, mlp
from mnist_jax import checkpoints, data, metrics, schedule, steps, train, writers
from tests.conftest import run_module

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


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    return workdir, train.train_and_evaluate(mlp.get_config("smoke"), workdir)


def test_smoke_run_writes_every_workdir_file(smoke_run):
    workdir, results = smoke_run
    assert set(results) == RESULT_KEYS
    assert json.loads((workdir / "results.json").read_text()) == results
    assert 0.0 <= results["test/accuracy"] <= 1.0 and results["num_steps"] == 20

    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["name"] == "mlp" and config["train"]["num_steps"] == 20

    rows = writers.read_metrics(workdir)
    assert [r["step"] for r in rows] == [10, 20]
    assert all(set(r) == PERIOD_KEYS for r in rows)
    assert rows[-1]["val/accuracy"] == pytest.approx(results["val/accuracy"], abs=1e-6)

    info = json.loads((workdir / "run_info.json").read_text())
    assert info["data"]["source"] == "embedded"
    assert len(info["data"]["content_sha256"]) == 64
    assert (info["data"]["num_train"], info["data"]["num_val"]) == (750, 250)
    assert info["versions"]["jax"] == jax.__version__
    assert info["devices"] and info["wall_seconds"] > 0

    assert list(workdir.glob("events.out.tfevents.*"))
    log_lines = (workdir / "train.log").read_text().splitlines()
    assert "step 10/20" in log_lines[0] and "test/accuracy" in log_lines[-1]
    for figure in (
        "log_loss.png",
        "confusion_matrix.png",
        "examples.png",
        "first_layer_weights.png",
    ):
        assert (workdir / figure).read_bytes()[:4] == b"\x89PNG", figure
    assert not list(workdir.glob(".*tmp*"))  # atomic writes leave no temp files


def test_linear_run_draws_its_class_templates(tmp_path):
    config = linear.get_config("smoke")
    config.train.num_steps, config.train.num_periods = 4, 1
    train.train_and_evaluate(config, tmp_path)
    assert (tmp_path / "confusion_matrix.png").exists()
    assert (tmp_path / "first_layer_weights.png").exists()  # 10 units: the classes


def test_same_seed_same_numbers(smoke_run, tmp_path):
    _, first = smoke_run
    again = train.train_and_evaluate(mlp.get_config("smoke"), tmp_path / "again")
    for key in RESULT_KEYS - {"train_seconds", "warnings"}:
        assert again[key] == first[key], key
    assert writers.read_metrics(tmp_path / "again") == writers.read_metrics(
        smoke_run[0]
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
    program, state, member = train.init_run(config, host)
    train_steps = jax.jit(program.train_steps, static_argnums=1)
    whole, _ = train_steps(state, 60, dataset, member)  # > 1 epoch of 25
    chunked = state
    for length in (7, 18, 1, 25, 9):
        chunked, _ = train_steps(chunked, length, dataset, member)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("num_rows", [steps.EVAL_BLOCK_ROWS - 1, 2_345])
def test_blocked_evaluation_scores_every_row_as_one_pass_would(num_rows):
    """Row blocks (and a remainder that is not a whole block) change no row's score."""
    host = data.load(mlp.get_config("smoke").data)
    program, state, _ = train.init_run(mlp.get_config("smoke"), host)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((num_rows, 784), np.float32))
    y = jnp.asarray(rng.integers(0, 10, num_rows), jnp.int32)
    values, predictions = jax.jit(program.row_scores)(state.params, x, y)
    logits = program.logits(state.params, x)
    assert set(values) == set(metrics.METRICS)
    for name, metric in metrics.METRICS.items():
        assert values[name].shape == predictions.shape == (num_rows,)
        np.testing.assert_allclose(
            values[name], metric.per_row(logits, y), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(predictions, jnp.argmax(logits, axis=-1))


def test_period_ends_cover_the_run():
    assert schedule.period_ends(1000, 10) == list(range(100, 1001, 100))
    assert schedule.period_ends(25, 4) == [6, 12, 19, 25]


def test_cli_run_leaves_everything_written_after_its_quick_exit(tmp_path):
    """The CLI skips the interpreter's teardown (`os._exit`): the last async checkpoint,
    the log file and every output must already be complete when it does."""
    workdir = tmp_path / "w"
    result = run_module(
        "mnist_jax.main", "--config=configs/mlp.py:smoke", f"--workdir={workdir}"
    )
    assert result.returncode == 0, result.stderr
    assert checkpoints.available_steps(workdir) == [5, 10, 20]
    restored = checkpoints.restore_model(workdir, 20)  # the final save, whole
    assert restored.first_layer().shape == (784, 100)
    assert (
        "Results: val/accuracy" in (workdir / "train.log").read_text().splitlines()[-1]
    )
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((workdir / "results.json").read_text())["num_steps"] == 20
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
    result = run_module(
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
