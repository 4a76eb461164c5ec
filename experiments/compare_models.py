"""Several runs side by side (e.g. the linear model against the MLP): the notebook's
second learning goal.

    python experiments/compare_models.py --workdirs=W1,W2[,...] [--names=linear,mlp]
        [--out=DIR] [--overwrite] [--data_path=DIR]

Writes `comparison.md` (accuracy and log-loss table, links to the figures),
`comparison_log_loss.png` (overlaid curves) and `comparison_confusion.png` (validation
confusion matrices at each run's latest checkpoint) into `--out`, by default a new
folder `./comparison-YYYYMMDD-HHMMSS` in the current directory (never into a
workdir). A `--out` that already holds a `comparison.md` is refused unless
`--overwrite`. `--data_path` reads the runs' data from a folder it has moved to since
training (it must be the same examples). In a notebook:
`mnist_jax.analysis.reports.compare_runs`.
"""

from absl import flags

from mnist_jax import cli
from mnist_jax.analysis import reports

_WORKDIRS = flags.DEFINE_list(
    "workdirs", None, "Run workdirs to compare.", required=True
)
_NAMES = flags.DEFINE_list("names", None, "Labels for the runs; default: model names.")
_OUT = flags.DEFINE_string(
    "out", None, "Output folder; default a new ./comparison-YYYYMMDD-HHMMSS."
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace a comparison already in --out."
)
_DATA_PATH = flags.DEFINE_string(
    "data_path", None, "Folder with the runs' data, if moved since training."
)


def main(argv) -> None:
    report = reports.compare_runs(
        _WORKDIRS.value,
        names=_NAMES.value,
        out=_OUT.value,
        data_path=_DATA_PATH.value,
        overwrite=_OVERWRITE.value,
    )
    print(report.markdown, end="")
    print(f"Wrote {', '.join(report.files)} to {report.folder}")


if __name__ == "__main__":
    cli.run(main)
