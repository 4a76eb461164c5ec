"""A model the package has never seen, defined and registered here alone: it trains,
checkpoints, resumes, sweeps and goes through every report, with no change to the
package. This is the README's "how to extend" example, run."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from configs import mlp
from mnist_jax import data
from mnist_jax.analysis import diagnostics, reports
from mnist_jax.config import schema as config_schema
from mnist_jax.core import models
from mnist_jax.data import readers
from mnist_jax.errors import ConfigError
from mnist_jax.run import checkpoints, train, writers
from mnist_jax.sweep import runner
from tests import processes

# Every diagnostic, at small sizes: that a model works with them, not their numbers.
CHEAP_DIAGNOSTICS = diagnostics.Settings(
    path_points=3, grid_points=3, hessian_rows=100, lanczos_iterations=8, trace_probes=4
)
CHEAP_FLAGS = (
    "--path_points=3",
    "--grid_points=3",
    "--hessian_rows=100",
    "--lanczos_iterations=8",
    "--trace_probes=4",
)


class CNN(nnx.Module):
    """One 3x3 convolution (stride 2, `channels` maps), ReLU, then a dense head."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, channels, kernel_size=(3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(14 * 14 * channels, data.NUM_CLASSES, rngs=rngs)

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
    rows = runner.run_sweep(config, tmp_path / "sweep")
    grid = {(r["optim.learning_rate"], r["model.channels"]) for r in rows}
    assert grid == {(0.03, 2), (0.03, 4), (0.1, 2), (0.1, 4)}
    # A member is, to the bit, the single run of its config (README, "Sweeps").
    member = next(
        r for r in rows if (r["optim.learning_rate"], r["model.channels"]) == (0.1, 4)
    )
    single_config = _config(channels=4)
    single_config.optim.learning_rate = 0.1
    single = train.train_and_evaluate(single_config, tmp_path / "single")
    for key in runner.RESULT_KEYS:
        assert member[key] == single[key], key
    best = (tmp_path / "sweep" / "best_config.py").read_text()
    assert "test_cnn" in best


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

    found = diagnostics.convergence_diagnostics(
        [workdir], settings=CHEAP_DIAGNOSTICS, out=tmp_path / "diagnostics"
    )
    assert [r["step"] for r in found.rows] == [5, 10, 20]
    assert all(r["hessian_top_1"] > 0 for r in found.rows)
    assert all((found.folder / f).exists() for f in found.files)


EXTENDED_CONFIG = '''"""An optimizer and a metric the package has never seen, registered by the config
file alone, as the README's "how to extend" shows."""

import jax.numpy as jnp
import optax

from mnist_jax.config import schema as config_schema
from mnist_jax.core import metrics, optim


@optim.OPTIMIZERS.register("test_rmsprop", fields={"decay": 0.9})
def rmsprop(learning_rate, decay):
    return optax.rmsprop(learning_rate, decay=decay)


def top2_correct(logits, labels):
    top2 = jnp.argsort(logits, axis=-1)[:, -2:]
    return (top2 == labels[:, None]).any(axis=-1).astype(jnp.float32)


metrics.register(metrics.Metric("top2_accuracy", top2_correct, higher_is_better=True))


def get_config(arg=None):
    config = config_schema.smoke(config_schema.default_config())
    config.optim.name = "test_rmsprop"
    config.optim.learning_rate = 0.003
    config.optim.decay = 0.8
    config.optim.loss_reduction = "mean"
    return config
'''


def test_an_optimizer_and_a_metric_registered_in_a_config_file(tmp_path):
    """Trained through the command line, the optimizer (with its own field) runs and
    the metric is computed and reported with the others: metrics.jsonl, results.json
    and the comparison report; not one file of the package changed."""
    config_file = tmp_path / "extended.py"
    config_file.write_text(EXTENDED_CONFIG)
    workdir = tmp_path / "run"
    result = processes.run(
        "mnist_jax.main", f"--config={config_file}", f"--workdir={workdir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["optim"]["name"] == "test_rmsprop" and saved["optim"]["decay"] == 0.8
    results = json.loads((workdir / "results.json").read_text())
    for split in ("val", "test"):
        top2, top1 = results[f"{split}/top2_accuracy"], results[f"{split}/accuracy"]
        assert top1 <= top2 <= 1.0 and top2 > 0.5
    rows = writers.read_metrics(workdir)
    assert [r["step"] for r in rows] == [10, 20]
    assert all(r["train/top2_accuracy"] >= r["train/accuracy"] for r in rows)
    assert "val/top2_accuracy" in result.stderr  # the results line of the log


CNN_CONFIG = '''"""A model the package has never seen, defined in this config file alone."""

import jax
from flax import nnx

from mnist_jax.config import schema as config_schema
from mnist_jax.core import models


@models.MODELS.register("file_cnn", fields={"channels": 4})
class FileCNN(nnx.Module):
    def __init__(self, channels, *, rngs):
        self.conv = nnx.Conv(1, channels, kernel_size=(3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(14 * 14 * channels, 10, rngs=rngs)

    def __call__(self, x, *, dropout_key=None):
        x = jax.nn.relu(self.conv(models.pixels(x).reshape(-1, 28, 28, 1)))
        return self.head(x.reshape(x.shape[0], -1))

    def first_layer(self):
        return self.conv.kernel[...].reshape(9, -1)


def get_config(arg=None):
    config = config_schema.smoke(config_schema.default_config())
    config.model.name = "file_cnn"
    config.train.num_steps = 20 if arg is None else int(arg)
    config.checkpoint.steps = (10, 20)
    return config
'''

RESTORE = (
    "import sys; from mnist_jax.run import checkpoints; "
    "m = checkpoints.restore_model(sys.argv[1], 10); print(type(m).__name__)"
)


def test_a_model_defined_in_a_config_file_is_found_again_by_every_reader(tmp_path):
    """Trained from a config file under tmp_path, the run records that file; a resume,
    `restore_model` and the reports, each in a new process that never loaded it, import
    it again. Moved away, the file is one error line naming it, and `--import` gives
    its new place."""
    config_file = tmp_path / "cnn_config.py"
    config_file.write_text(CNN_CONFIG)
    workdir = tmp_path / "run"
    trained = processes.run(
        "mnist_jax.main", f"--config={config_file}:10", f"--workdir={workdir}"
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_info = json.loads((workdir / "run_info.json").read_text())
    assert run_info["registered_parts"] == {"model.name=file_cnn": str(config_file)}

    resumed = processes.run(
        "mnist_jax.main", f"--config={config_file}:20", f"--workdir={workdir}"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from the checkpoint at step 10" in resumed.stderr
    assert checkpoints.available_steps(workdir) == [10, 20]

    restored = processes.run(processes.Code(RESTORE), str(workdir))
    assert restored.returncode == 0 and restored.stdout.strip() == "FileCNN", (
        restored.stderr[-3000:]
    )
    for script in (
        "weight_evolution.py",
        "confusion_matrix.py",
        "convergence_diagnostics.py",
    ):
        report = processes.run(
            processes.REPO / "experiments" / script,
            f"--workdir={workdir}",
            f"--out={tmp_path / script}",
            *(CHEAP_FLAGS if script == "convergence_diagnostics.py" else ()),
        )
        assert report.returncode == 0, report.stderr[-3000:]

    moved = tmp_path / "elsewhere" / "cnn.py"
    moved.parent.mkdir()
    config_file.rename(moved)
    script = processes.REPO / "experiments" / "confusion_matrix.py"
    lost = processes.run(script, f"--workdir={workdir}", f"--out={tmp_path / 'a'}")
    assert lost.returncode == 2
    assert lost.stderr.strip().splitlines()[-1] == (
        f"error: {workdir}: model.name=file_cnn was registered in {config_file}, "
        "gone; pass --import=FILE of the definition of model.name 'file_cnn'"
    )
    found = processes.run(
        script, f"--workdir={workdir}", f"--out={tmp_path / 'b'}", f"--import={moved}"
    )
    assert found.returncode == 0, found.stderr[-3000:]


def _load_npz(folder, data_config):
    """A data set of one .npz file (pool and test arrays): the whole definition."""
    path = folder / "digits.npz"
    arrays = np.load(path)
    pool = slice(0, data_config.num_examples)
    return data.HostData(
        arrays["pool_images"][pool],
        arrays["pool_labels"][pool],
        arrays["test_images"],
        arrays["test_labels"],
        source="test_npz",
        files={str(path): readers.sha256_file(path)},
        num_train=data_config.num_train,
    )


def test_a_data_set_is_one_registered_definition(tmp_path):
    """Registered from outside the package, `data.source=auto` recognises its folder
    by its marker file, a run trains on it, and the run records where it came from."""
    embedded = data.load(mlp.get_config("smoke").data)
    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(
        folder / "digits.npz",
        pool_images=embedded.pool_images,
        pool_labels=embedded.pool_labels,
        test_images=embedded.test_images,
        test_labels=embedded.test_labels,
    )
    data.SOURCES.register(
        data.Source("test_npz", _load_npz, "digits in one .npz", marker="digits.npz")
    )
    try:
        config = mlp.get_config("smoke")
        config.data.source, config.data.path = "auto", str(folder)
        assert data.resolve(config.data) == ("test_npz", str(folder))
        workdir = tmp_path / "run"
        results = train.train_and_evaluate(config, workdir)
        same = mlp.get_config("smoke")  # the embedded sample, read the package's way
        reference = train.train_and_evaluate(same, tmp_path / "reference")
        assert results["val/accuracy"] == reference["val/accuracy"]
        run_info = json.loads((workdir / "run_info.json").read_text())
        assert run_info["data"]["source"] == "test_npz"
        assert run_info["registered_parts"] == {"data.source=test_npz": __file__}
        config.data.source = "test_npz"
        config_schema.validate(config)  # a known name now
    finally:
        data.SOURCES.unregister("test_npz")
    with pytest.raises(ConfigError, match="data.source='test_npz' is not one of auto"):
        config_schema.validate(config)
