"""The analysis scripts, run as a user runs them, on small real workdirs."""

import json

import numpy as np
import pandas as pd
import pytest

from mnist_jax.analysis import runs as analysis
from tests import processes
from tests.conftest import copy_workdir


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, mlp_smoke_run, linear_smoke_run):
    """Copies of the shared smoke runs: the scripts write `WORKDIR/analysis`."""
    root = tmp_path_factory.mktemp("runs")
    return (
        copy_workdir(mlp_smoke_run, root / "mlp"),
        copy_workdir(linear_smoke_run, root / "linear"),
    )


def _script(name, *args, cwd=processes.REPO):
    return processes.run(
        processes.REPO / "experiments" / f"{name}.py", *args, timeout=180, cwd=cwd
    )


def test_weight_evolution(workdirs):
    workdir = workdirs[0]
    result = _script("weight_evolution", f"--workdir={workdir}", "--units=4")
    assert result.returncode == 0, result.stderr
    out = workdir / "analysis"
    table = pd.read_csv(out / "weight_evolution.csv")
    assert table["step"].tolist() == [5, 10, 20]
    # Known answers: the last checkpoint scores what results.json says; the distances
    # are the first layer's, restored and compared here directly.
    results = json.loads((workdir / "results.json").read_text())
    for key in ("val/accuracy", "val/log_loss"):
        assert table[key].iloc[-1] == pytest.approx(results[key], abs=1e-6), key
    run = analysis.load_run(workdir)
    kernels = [
        analysis.first_layer_kernel(run.model(run.params_at(s))) for s in (5, 10, 20)
    ]
    initial = analysis.first_layer_kernel(run.model(run.initial_params))
    np.testing.assert_allclose(
        table["l2_from_init"], [np.linalg.norm(k - initial) for k in kernels], 1e-5
    )
    np.testing.assert_allclose(
        table["l2_from_previous"],
        [
            np.linalg.norm(b - a)
            for a, b in zip([initial, *kernels[:-1]], kernels, strict=True)
        ],
        1e-5,
    )
    smooth = [analysis.smoothness(k) for k in kernels]
    np.testing.assert_allclose(
        table["smoothness_mean"], [s.mean() for s in smooth], 1e-5
    )
    np.testing.assert_allclose(
        table["noise_units"], [np.mean(s < analysis.NOISE_SMOOTHNESS) for s in smooth]
    )
    for column in ("dead_units", "ignored_units"):
        assert table[column].between(0, 1).all()
    assert (out / "weight_evolution.md").read_text().startswith("| step |")
    assert (out / "weight_evolution.png").read_bytes()[:4] == b"\x89PNG"


def test_confusion_matrix_any_step_and_split(workdirs, tmp_path):
    workdir = workdirs[0]
    result = _script(
        "confusion_matrix",
        f"--workdir={workdir}",
        "--step=10",
        "--split=test",
        f"--out={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    counts = np.loadtxt(
        tmp_path / "confusion_matrix_step10_test.csv",
        delimiter=",",
        skiprows=1,
        dtype=int,
    )[:, 1:]
    assert counts.shape == (10, 10) and counts.sum() == 1000  # the embedded test set
    assert (tmp_path / "confusion_matrix_step10_test.png").exists()
    assert (tmp_path / "confused_pairs_step10_test.png").exists()
    assert (
        "| true | predicted | count |"
        in (tmp_path / "confused_pairs_step10_test.md").read_text()
    )


def test_compare_models(workdirs, tmp_path):
    result = _script(
        "compare_models",
        f"--workdirs={workdirs[1]},{workdirs[0]}",
        "--names=linear,mlp",
        f"--out={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "comparison.md").read_text()
    assert "| linear |" in report and "| mlp |" in report
    for figure in ("comparison_log_loss.png", "comparison_confusion.png"):
        assert (tmp_path / figure).exists()


def test_compare_models_writes_a_new_folder_and_never_overwrites(workdirs, tmp_path):
    args = (f"--workdirs={workdirs[1]},{workdirs[0]}", "--names=linear,mlp")
    result = _script("compare_models", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (folder,) = tmp_path.glob("comparison-*")
    assert (folder / "comparison.md").is_file()
    assert not (workdirs[1] / "analysis" / "comparison.md").exists()

    result = _script("compare_models", *args, f"--out={folder}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {folder} already holds a comparison.md; choose another --out, or "
        "pass --overwrite to replace it"
    )
    result = _script("compare_models", *args, f"--out={folder}", "--overwrite")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "script, args, message",
    [
        (
            "confusion_matrix",
            ["--step=7"],
            "no checkpoint at step 7; available: 5, 10, 20",
        ),
        (
            "weight_evolution",
            ["--steps=5,11"],
            "no checkpoint at step 11; available: 5, 10, 20",
        ),
    ],
)
def test_missing_step_is_one_line(workdirs, script, args, message):
    result = _script(script, f"--workdir={workdirs[0]}", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {workdirs[0]}: {message}"


def test_workdir_without_checkpoints_is_one_line(tmp_path, workdirs):
    (tmp_path / "config.json").write_text((workdirs[0] / "config.json").read_text())
    result = _script("confusion_matrix", f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert "no checkpoints" in result.stderr and "Traceback" not in result.stderr


def test_smoothness_separates_noise_from_strokes():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(784, 1))
    yy, xx = np.mgrid[:28, :28]
    stroke = np.exp(-((xx - 14) ** 2) / 20.0 - ((yy - 10) ** 2) / 60.0).reshape(784, 1)
    scores = analysis.smoothness(np.hstack([noise, stroke]))
    assert abs(scores[0]) < 0.1 and scores[1] > 0.8


def test_confused_pairs_counts():
    labels = np.array([3, 3, 3, 5, 5, 8])
    predictions = np.array([3, 5, 5, 3, 5, 8])
    pairs = analysis.confused_pairs(labels, predictions)
    assert pairs[0] == {"true": 3, "predicted": 5, "count": 2, "share_of_true": 2 / 3}
    assert pairs[1]["count"] == 1 and len(pairs) == 2
