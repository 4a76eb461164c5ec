"""How the first layer changes between convergence levels, from one run's checkpoints.

    python experiments/weight_evolution.py --workdir=W [--steps=10,100,1000] [--units=12]
        [--out=DIR] [--data_path=DIR]

Writes `weight_evolution.png` (rows = units, columns = checkpoints, one symmetric colour
scale per unit) and `weight_evolution.csv` / `.md` (per checkpoint: validation accuracy
and log loss, L2 distance of the first-layer weights from init and from the previous
checkpoint, mean spatial smoothness, share of dead and ignored units) into
`W/analysis/` or `--out`. `--data_path` reads the run's data from a folder it has
moved to since training (it must be the same examples). In a notebook:
`mnist_jax.analysis.reports.weight_evolution`.
"""

from absl import flags

from mnist_jax import cli
from mnist_jax.analysis import reports

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir.", required=True)
_STEPS = flags.DEFINE_list(
    "steps", None, "Checkpoint steps; default: the run's kept steps."
)
_UNITS = flags.DEFINE_integer("units", 12, "First-layer units to draw.", lower_bound=1)
flags.register_validator(
    "steps",
    lambda steps: steps is None or all(s.strip().isdigit() for s in steps),
    "--steps must be checkpoint steps (non-negative integers), e.g. 10,100,1000",
)
_OUT = flags.DEFINE_string("out", None, "Output folder; default WORKDIR/analysis.")
_DATA_PATH = flags.DEFINE_string(
    "data_path", None, "Folder with the run's data, if moved since training."
)


def main(argv) -> None:
    report = reports.weight_evolution(
        _WORKDIR.value,
        steps=[int(s) for s in _STEPS.value] if _STEPS.value else None,
        units=_UNITS.value,
        out=_OUT.value,
        data_path=_DATA_PATH.value,
    )
    print(report.markdown, end="")
    print(f"Wrote {', '.join(report.files)} to {report.folder}")


if __name__ == "__main__":
    cli.run(main)
