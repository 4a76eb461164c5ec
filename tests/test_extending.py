"""A model the package has never seen, defined and registered here alone: it trains,
checkpoints, resumes, sweeps and goes through every report, with no change to the
package. This is the README's "how to extend" example, run."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from configs import mlp
from mnist_jax import checkpoints, config_schema, models, reports, sweep, train, writers


class CNN(nnx.Module):
    """One 3x3 convolution (stride 2, `channels` maps), ReLU, then a dense head."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, channels, kernel_size=(3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(14 * 14 * channels, models.NUM_CLASSES, rngs=rngs)

    def __call__(self, x, *, dropout_key=None):
        x = models.pixels(x).reshape(-1, 28, 28, 1)
        x = jax.nn.relu(self.conv(x))
        return self.head(x.reshape(x.shape[0], -1))

    def first_layer(self):
        """(9, channels): each map's 3x3 kernel, drawn as a 3x3 image."""
        return self.conv.kernel[...].reshape(9, -1)


@pytest.fixture(scope="module")
def cnn():
    models.MODELS.register("test_cnn", fields={"channels": 4})(CNN)
    yield "test_cnn"
    models.MODELS.unregister("test_cnn")


def _config(num_steps=20, **fields):
    config = mlp.get_config("smoke")
    config.model.name = "test_cnn"
    config.model.update(fields)
    config.train.num_steps = num_steps
    return config


@pytest.fixture(scope="module")
def cnn_run(cnn, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cnn")
    return workdir, train.train_and_evaluate(_config(channels=6), workdir)


def test_a_registered_model_trains_and_checkpoints(cnn_run):
    workdir, results = cnn_run
    assert results["val/accuracy"] > 0.3  # learnt something in 20 steps
    assert json.loads((workdir / "config.json").read_text())["model"]["channels"] == 6
    assert (workdir / "first_layer_weights.png").exists()
    assert checkpoints.available_steps(workdir) == [5, 10, 20]
    model = checkpoints.restore_model(workdir)
    assert isinstance(model, CNN) and model.conv.kernel[...].shape == (3, 3, 1, 6)


def test_a_registered_model_resumes_bitwise(cnn_run, tmp_path):
    workdir, results = cnn_run
    train.train_and_evaluate(_config(num_steps=10, channels=6), tmp_path)
    resumed = train.train_and_evaluate(_config(channels=6), tmp_path)
    for key in ("val/accuracy", "val/log_loss", "test/accuracy", "test/log_loss"):
        assert resumed[key] == results[key], key
    # Periods follow num_steps (5, 10 then 20 here; 10, 20 uninterrupted): the last
    # period's scores, after the same 20 steps, are the same bits.
    assert writers.read_metrics(tmp_path)[-1] == writers.read_metrics(workdir)[-1]


def test_a_registered_model_sweeps(cnn, tmp_path):
    config = config_schema.with_sweep(
        _config(), {"optim.learning_rate": (0.03, 0.1), "model.channels": (2, 4)}
    )
    rows = sweep.run_sweep(config, tmp_path)
    grid = {(r["optim.learning_rate"], r["model.channels"]) for r in rows}
    assert grid == {(0.03, 2), (0.03, 4), (0.1, 2), (0.1, 4)}
    assert all(np.isfinite(r["test/log_loss"]) for r in rows)
    assert (tmp_path / "sweep.csv").exists() and (tmp_path / "best_config.py").exists()


def test_a_registered_model_goes_through_every_report(cnn_run, tmp_path):
    workdir, results = cnn_run
    evolution = reports.weight_evolution(workdir, out=tmp_path / "evolution")
    assert [r["step"] for r in evolution.rows] == [5, 10, 20]  # the kept steps
    assert evolution.rows[-1]["l2_from_init"] > evolution.rows[0]["l2_from_init"] > 0
    assert np.isnan(evolution.rows[0]["dead_units"])  # CNN reports no activity
    assert (tmp_path / "evolution" / "weight_evolution.png").exists()

    confusion = reports.confusion_report(
        workdir, step=20, split="test", out=tmp_path / "confusion"
    )
    assert all((confusion.folder / f).exists() for f in confusion.files)

    mlp_workdir = tmp_path / "mlp"
    train.train_and_evaluate(mlp.get_config("smoke"), mlp_workdir)
    comparison = reports.compare_runs(
        [workdir, mlp_workdir], ["cnn", "mlp"], out=tmp_path / "comparison"
    )
    assert [r["model"] for r in comparison.rows] == ["test_cnn", "mlp"]
    assert comparison.rows[0]["test/accuracy"] == results["test/accuracy"]
    assert all((comparison.folder / f).exists() for f in comparison.files)
