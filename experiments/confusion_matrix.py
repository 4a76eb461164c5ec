"""The confusion matrix of any checkpoint, and the digit pairs it confuses most.

    python experiments/confusion_matrix.py --workdir=W [--step=N] [--split=val|test]
        [--pairs=5] [--out=DIR] [--data_path=DIR]

Writes `confusion_matrix_step{N}_{split}.png` (row-normalised heatmap), `.csv` (counts),
`confused_pairs_step{N}_{split}.md` and `.png` (a few mistakes of each pair) into
`W/analysis/` or `--out`. The step defaults to the latest checkpoint. `--data_path`
reads the run's data from a folder it has moved to since training (it must be the
same examples). In a notebook: `mnist_jax.analysis.reports.confusion_report`.
"""

from absl import flags

from mnist_jax import cli
from mnist_jax.analysis import reports

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir.", required=True)
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step; default: the latest.", lower_bound=0
)
_SPLIT = flags.DEFINE_enum("split", "val", ["val", "test"], "Which examples to score.")
_PAIRS = flags.DEFINE_integer(
    "pairs", 5, "How many confused pairs to list.", lower_bound=0
)
_OUT = flags.DEFINE_string("out", None, "Output folder; default WORKDIR/analysis.")
_DATA_PATH = flags.DEFINE_string(
    "data_path", None, "Folder with the run's data, if moved since training."
)


def main(argv) -> None:
    report = reports.confusion_report(
        _WORKDIR.value,
        step=_STEP.value,
        split=_SPLIT.value,
        pairs=_PAIRS.value,
        out=_OUT.value,
        data_path=_DATA_PATH.value,
    )
    print(report.markdown, end="")
    print(f"Wrote {', '.join(report.files)} to {report.folder}")


if __name__ == "__main__":
    cli.run(main)
