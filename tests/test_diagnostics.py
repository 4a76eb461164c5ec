"""Convergence diagnostics: each measure against a direct computation, then the
command on one run, two seeds and bad input (sweep members: test_sweep.py)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from configs import mlp
from mnist_jax.analysis import diagnostics, hessian, landscape, similarity
from mnist_jax.analysis import runs as analysis
from mnist_jax.core import metrics, models, optim, steps
from mnist_jax.errors import UserError
from mnist_jax.run import train
from tests import processes
from tests.conftest import copy_workdir

SCRIPT = processes.REPO / "experiments" / "convergence_diagnostics.py"


def _small_program(reduction: str):
    """An MLP of 2,395 parameters, small enough for a dense Hessian."""
    model = models.MLP((3,), 0.0, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    return steps.Program(graphdef, 30, reduction), params


@pytest.fixture(scope="module")
def rows(mlp_smoke_run):
    """150 real training images and labels (the smoke run's data)."""
    run = analysis.load_run(mlp_smoke_run.workdir)
    idx = np.asarray(run.member.train_idx[:150])
    return run.dataset.pool_x[idx], run.dataset.pool_y[idx]


@pytest.mark.parametrize("reduction", optim.LOSS_REDUCTIONS)
def test_sharpness_matches_the_dense_hessian(rows, reduction):
    """Top 3 eigenvalues and trace, at the defaults, within 1% of `jax.hessian`'s."""
    program, params = _small_program(reduction)
    x, y = rows
    flat, unravel = ravel_pytree(params)
    loss = hessian.training_loss(program)
    dense = np.asarray(jax.hessian(lambda f: loss(unravel(f), x, y))(flat), np.float64)
    expected = np.linalg.eigvalsh(dense)[::-1][:3]

    top, trace = hessian.curvature(program)(params, jax.random.key(0), x, y)
    np.testing.assert_allclose(np.asarray(top), expected, rtol=0.01)
    assert float(trace) == pytest.approx(np.trace(dense), rel=0.01)

    vector = jax.random.normal(jax.random.key(1), flat.shape)
    product = hessian.hvp(loss, params, unravel(vector), x, y)
    np.testing.assert_allclose(
        ravel_pytree(product)[0], dense @ np.asarray(vector), rtol=1e-3, atol=1e-3
    )


def test_lanczos_finds_a_known_spectrum():
    eigenvalues = jnp.concatenate(
        [jnp.array([50.0, 20.0, 7.0]), jnp.linspace(-1, 1, 97)]
    )
    found = hessian.top_eigenvalues(
        hessian.lanczos(
            lambda v: eigenvalues * v, jax.random.normal(jax.random.key(0), (100,)), 48
        )
    )
    np.testing.assert_allclose(found, [50.0, 20.0, 7.0], rtol=1e-5)


def test_barrier_is_the_largest_excess_over_the_endpoints_line():
    assert landscape.barrier([1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert landscape.barrier([2.0, 1.0, 0.5]) == 0.0  # below the line: no barrier
    assert landscape.barrier([1.0, 1.0, 1.0, 1.0]) == 0.0


def test_a_path_scores_its_endpoints_as_metrics_jsonl_does(mlp_smoke_run):
    run = analysis.load_run(mlp_smoke_run.workdir)
    a, b = run.params_at(5), run.params_at(20)
    path = landscape.path_metrics(run.program, a, b, run.dataset, run.member, 5)
    np.testing.assert_allclose(path["alpha"], [0, 0.25, 0.5, 0.75, 1])
    for end, params in ((0, a), (-1, b)):
        scores = run.scores(params, "val")
        for name in metrics.keys("val"):
            assert path[name][end] == pytest.approx(scores[name], rel=1e-5), name
    middle = landscape.interpolate(a, b, 0.5)
    scores = run.scores(middle, "val")
    assert path["val/log_loss"][2] == pytest.approx(scores["val/log_loss"], rel=1e-5)


def test_directions_are_normalised_filter_by_filter(mlp_smoke_run):
    run = analysis.load_run(mlp_smoke_run.workdir)
    params = run.params_at(20)
    direction = landscape.filter_normalized_direction(
        jax.random.key(0), params, landscape.per_output_unit
    )
    kernel = np.asarray(params["hidden"][0]["kernel"][...])
    moved = np.asarray(direction["hidden"][0]["kernel"][...])
    np.testing.assert_allclose(
        np.linalg.norm(moved, axis=0), np.linalg.norm(kernel, axis=0), rtol=1e-5
    )
    assert not np.any(np.asarray(direction["hidden"][0]["bias"][...]))  # left out
    assert not np.allclose(moved / kernel, (moved / kernel)[0, 0])  # random, not params

    # A model's own split: here whole layers, per input row, biases too.
    def per_row(path, shape):
        return 0

    own = landscape.filter_normalized_direction(jax.random.key(0), params, per_row)
    bias = np.asarray(params["hidden"][0]["bias"][...])
    own_bias = np.asarray(own["hidden"][0]["bias"][...])
    np.testing.assert_allclose(
        np.abs(own_bias), np.abs(bias), rtol=1e-5
    )  # 1-element rows
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(own["hidden"][0]["kernel"][...]), axis=1),
        np.linalg.norm(kernel, axis=1),
        rtol=1e-5,
    )

    class Split(nnx.Module):
        filter_axis = staticmethod(per_row)

    assert landscape.filter_axis_of(Split()) is per_row
    assert landscape.filter_axis_of(run.model(params)) is landscape.per_output_unit


def test_a_slice_is_the_loss_at_each_grid_point(mlp_smoke_run):
    run = analysis.load_run(mlp_smoke_run.workdir)
    params = run.params_at(10)
    x, y = run.split("val")
    keys = jax.random.split(jax.random.key(3), 2)
    axis = landscape.per_output_unit
    d1, d2 = (landscape.filter_normalized_direction(k, params, axis) for k in keys)
    coords = landscape.grid_coords(5, 0.5)
    surface = landscape.loss_surface(run.program, params, (d1, d2), coords, x, y)
    assert surface.shape == (5, 5)
    assert surface[2, 2] == pytest.approx(
        run.scores(params, "val")["val/log_loss"], rel=1e-5
    )
    moved = jax.tree.map(lambda p, u, v: p + 0.5 * u - 0.25 * v, params, d1, d2)
    assert surface[4, 1] == pytest.approx(
        run.scores(moved, "val")["val/log_loss"], rel=1e-5
    )


def test_linear_cka_invariances_and_a_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 30)) @ rng.normal(size=(30, 30))
    rotation, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    assert similarity.linear_cka(x, 3.7 * x @ rotation + 5.0) == pytest.approx(1.0)
    independent = rng.normal(size=(2000, 20))
    assert similarity.linear_cka(x, independent) < 0.05

    y = x[:, :10] ** 2 + rng.normal(size=(2000, 10))
    centering = np.eye(300) - 1.0 / 300
    xs, ys = x[:300], y[:300]
    kx, ky = centering @ xs @ xs.T @ centering, centering @ ys @ ys.T @ centering
    direct = np.sum(kx * ky) / np.sqrt(np.sum(kx * kx) * np.sum(ky * ky))
    assert similarity.linear_cka(xs, ys) == pytest.approx(direct, rel=1e-9)
    matrix = similarity.cka_matrix([xs, ys, xs])
    np.testing.assert_allclose(matrix, matrix.T)
    assert matrix[0, 2] == pytest.approx(1.0) and matrix[0, 1] == pytest.approx(direct)


def test_per_class_accuracy_and_churn():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0, 0])
    accuracy = similarity.per_class_accuracy(labels, predictions, num_classes=4)
    np.testing.assert_allclose(accuracy[:3], [0.5, 2 / 3, 0.0])
    assert np.isnan(accuracy[3])  # no row of digit 3
    assert similarity.churn(predictions, labels) == pytest.approx(3 / 6)


def test_every_model_has_representations(mlp_smoke_run, linear_smoke_run):
    mlp_run = analysis.load_run(mlp_smoke_run.workdir)
    x, _ = mlp_run.split("val")
    layers = similarity.representations(mlp_run.model(mlp_run.params_at(20)), x)
    assert {k: v.shape for k, v in layers.items()} == {
        "hidden_1": (len(x), 100),
        "hidden_2": (len(x), 100),
        "logits": (len(x), 10),
    }
    linear_run = analysis.load_run(linear_smoke_run.workdir)
    layers = similarity.representations(linear_run.model(linear_run.params_at(20)), x)
    assert list(layers) == ["logits"]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, mlp_smoke_run):
    """Two seeds of `configs/mlp.py:smoke` (copies: the command writes analysis/)."""
    root = tmp_path_factory.mktemp("seeds")
    seed0 = copy_workdir(mlp_smoke_run, root / "seed0")
    config = mlp.get_config("smoke")
    config.seed = 1
    train.train_and_evaluate(config, root / "seed1")
    return seed0, root / "seed1"


def test_the_command_on_one_run(seeds, tmp_path):
    result = processes.run(SCRIPT, f"--workdir={seeds[0]}", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = seeds[0] / "analysis"
    for name in diagnostics.FILES.values():
        assert (folder / name).stat().st_size > 0, name
    for stage in ("read", *diagnostics.STAGES):
        assert any(line.startswith(f"{stage}: ") for line in result.stderr.splitlines())

    table = pd.read_csv(folder / "diagnostics.csv")
    assert list(table["step"]) == [5, 10, 20]  # the kept steps
    assert (
        (
            table[["hessian_top_1", "hessian_top_2", "hessian_top_3"]]
            .diff(axis=1)
            .iloc[:, 1:]
            <= 0
        )
        .all()
        .all()
    )
    assert (table["hessian_trace"] > table["hessian_top_1"]).all()
    assert table["churn_from_previous"].isna().tolist() == [True, False, False]
    digits = table[[f"val_accuracy_digit_{d}" for d in range(10)]].to_numpy()
    assert ((digits >= 0) & (digits <= 1)).all()

    found = json.loads((folder / "diagnostics.json").read_text())
    assert found["settings"]["hessian_rows"] == 2500
    assert len(found["runs"][0]["hessian_rows"]) == 750  # all the smoke run has
    assert [(p["group"], p["segment"]) for p in found["paths"]] == [
        ("seed0", "5->10"),
        ("seed0", "10->20"),
    ]
    assert all(len(p["alpha"]) == 25 for p in found["paths"])
    assert [s["step"] for s in found["slices"]] == [5, 10, 20]
    assert np.asarray(found["slices"][0]["loss"]).shape == (21, 21)
    assert found["between_runs"] == []
    markdown = (folder / "diagnostics.md").read_text()
    assert "## Between consecutive steps" in markdown and markdown in result.stdout

    again = diagnostics.convergence_diagnostics(
        [seeds[0]], stages=("sharpness", "per_class"), out=tmp_path
    )
    for first, second in zip(table.to_dict("records"), again.rows, strict=True):
        for name in ("hessian_top_1", "hessian_trace", "val_accuracy_digit_3"):
            assert second[name] == pytest.approx(first[name], rel=1e-6), name


def test_two_seeds_end_apart(seeds, tmp_path):
    result = processes.run(
        SCRIPT,
        f"--workdirs={seeds[0]},{seeds[1]}",
        f"--out={tmp_path}",
        "--diagnostics=paths,per_class,cka",
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "diagnostics.json").read_text())
    between = found["between_runs"]
    assert [(r["from"], r["to"], r["step"]) for r in between] == [
        ("seed0", "seed1", s) for s in (5, 10, 20)
    ]
    for row in between:
        assert 0 < row["churn"] < 1 and 0 < row["cka_hidden_1"] < 1
    # Two seeds start at different random points: a barrier between them, none on the
    # way from one step to the next of either.
    assert between[-1]["train_barrier"] > 0.1
    assert all(
        r["train_barrier"] < between[-1]["train_barrier"]
        for r in found["between_steps"]
    )
    assert [
        c["labels"]
        for c in found["cka"]
        if c["title"].startswith("hidden_1 across runs")
    ][-1] == ["seed0", "seed1"]


def test_every_registered_model_is_diagnosed(linear_smoke_run, tmp_path):
    """The linear model: no hidden layer (CKA of logits), zero-initialised."""
    report = diagnostics.convergence_diagnostics(
        [linear_smoke_run.workdir], out=tmp_path
    )
    assert [r["step"] for r in report.rows] == [5, 10, 20]
    assert all(r["hessian_top_1"] > 0 for r in report.rows)
    found = json.loads((tmp_path / "diagnostics.json").read_text())
    assert {c["layer"] for c in found["cka"]} == {"logits"}


def _error(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    return lines[-1]


def test_bad_input_is_one_line(seeds, tmp_path):
    seed0, _ = seeds
    missing = processes.run(
        SCRIPT, f"--workdir={seed0}", "--steps=7", f"--out={tmp_path}"
    )
    assert "no checkpoint at step 7; available: 5, 10, 20" in _error(missing)
    both = processes.run(SCRIPT, f"--workdir={seed0}", f"--workdirs={seed0}")
    assert "exactly one of --workdir" in _error(both)


def test_runs_that_cannot_be_compared_or_read(seeds, linear_smoke_run, tmp_path):
    """Each a UserError: the command prints it as its one `error:` line."""
    seed0, seed1 = seeds
    with pytest.raises(UserError, match="a path between runs needs the same model"):
        diagnostics.convergence_diagnostics(
            [seed0, linear_smoke_run.workdir], out=tmp_path
        )

    other_data = tmp_path / "other_data"
    config = mlp.get_config("smoke")
    config.data.num_examples = 900
    config.data.num_train = 700
    train.train_and_evaluate(config, other_data)
    with pytest.raises(UserError, match="trained on other data .* needs the same data"):
        diagnostics.convergence_diagnostics([seed0, other_data], out=tmp_path)
    # Without paths, runs on different data can still be compared by predictions.
    report = diagnostics.convergence_diagnostics(
        [seed0, other_data], stages=("per_class",), out=tmp_path
    )
    assert len(report.rows) == 6

    damaged = tmp_path / "damaged"
    shutil.copytree(seed1, damaged)
    for path in (damaged / "checkpoints" / "10").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")
    with pytest.raises(UserError, match="checkpoints/10: checkpoint cannot be read"):
        diagnostics.convergence_diagnostics([damaged], out=tmp_path)
    with pytest.raises(UserError, match="--members selects a sweep's members"):
        diagnostics.convergence_diagnostics([seed0], members=[1], out=tmp_path)
    with pytest.raises(UserError, match="unknown diagnostics"):
        diagnostics.convergence_diagnostics([seed0], stages=("hessian",), out=tmp_path)


def test_compiled_once_for_every_checkpoint_and_run(seeds, tmp_path):
    """Two runs of one model, three checkpoints each: every diagnostic's program is
    compiled once and reused."""
    for cached in (hessian.curvature, landscape.path_scorer, landscape.surface_scorer):
        cached.cache_clear()  # new jitted functions: their compilations counted here
    settings = diagnostics.Settings(trace_probes=4, grid_points=3, path_points=3)
    subjects = diagnostics.load_subjects(seeds)
    diagnostics.diagnose(subjects, ("sharpness", "paths", "slice"), settings)
    program = subjects[0].run.program
    assert program == subjects[1].run.program  # equal shapes: one cache entry
    measure = hessian.curvature(
        program, settings.top_k, settings.lanczos_iterations, settings.trace_probes
    )
    assert measure._cache_size() == 1
    assert landscape.path_scorer(program)._cache_size() == 1
    assert landscape.surface_scorer(program)._cache_size() == 1
