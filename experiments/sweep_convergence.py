"""How each setting of a sweep converges: every member restored at its kept checkpoint
steps (10, 100, 1000 by default), summarised over seeds.

    python experiments/sweep_convergence.py --workdir=SWEEP [--out=DIR] [--data_path=DIR]

Writes `convergence.csv` / `.md` (per setting and step: mean and std over seeds of
validation accuracy, log loss, the first layer's L2 distance from its
initialisation, and the sharpness: the top eigenvalue of the training loss's Hessian
on the member's first 2,500 training rows, as `convergence_diagnostics.py` measures
it) and `convergence.png` (the swept value on x, log-scaled for learning
rates; one line per step) into `SWEEP/analysis/` or `--out`. In a notebook:
`mnist_jax.analysis.convergence.sweep_convergence`.
"""

from absl import flags

from mnist_jax import cli
from mnist_jax.analysis import convergence

_WORKDIR = flags.DEFINE_string("workdir", None, "A sweep's workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder; default SWEEP/analysis.")
_DATA_PATH = flags.DEFINE_string(
    "data_path", None, "Folder with the sweep's data, if moved since training."
)


def main(argv) -> None:
    report = convergence.sweep_convergence(
        _WORKDIR.value, out=_OUT.value, data_path=_DATA_PATH.value
    )
    print(report.markdown, end="")
    print(f"Wrote {', '.join(report.files)} to {report.folder}")


if __name__ == "__main__":
    cli.run(main)
