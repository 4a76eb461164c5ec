"""The confusion matrix of any checkpoint, and the digit pairs it confuses most.

    python experiments/confusion_matrix.py --workdir=W [--step=N] [--split=val|test]

Writes `confusion_matrix_step{N}_{split}.png` (row-normalised heatmap), `.csv` (counts),
`confused_pairs_step{N}_{split}.md` and `.png` (a few mistakes of each pair) into
`W/analysis/` or `--out`. The step defaults to the latest checkpoint.
"""

import numpy as np
from absl import flags

from mnist_jax import analysis, checkpoints, cli, metrics, plots, writers

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_SPLIT = flags.DEFINE_enum("split", "val", ["val", "test"], "Which examples to score.")
_PAIRS = flags.DEFINE_integer("pairs", 5, "How many confused pairs to list.")
_OUT = flags.DEFINE_string("out", None, "Output folder; default WORKDIR/analysis.")


def main(argv) -> None:
    step = checkpoints.check_step(_WORKDIR.value, _STEP.value)
    run = analysis.load_run(_WORKDIR.value)
    scores = run.predict(run.params_at(step), _SPLIT.value)
    labels, predictions = scores["labels"], scores["predictions"]
    counts = np.asarray(metrics.confusion_matrix(labels, predictions))
    normalized = np.asarray(metrics.normalize_rows(counts))
    out = analysis.output_dir(run.workdir, _OUT.value)
    name = f"step{step}_{_SPLIT.value}"

    title = f"{_SPLIT.value} at step {step}: accuracy {scores['accuracy']:.4f} (row-normalised)"
    plots.save(
        plots.plot_confusion_matrix(normalized, title),
        out / f"confusion_matrix_{name}.png",
    )
    header = "true\\predicted," + ",".join(map(str, range(10)))
    np.savetxt(
        out / f"confusion_matrix_{name}.csv",
        np.column_stack([np.arange(10), counts]),
        fmt="%d",
        delimiter=",",
        header=header,
        comments="",
    )
    pairs = analysis.confused_pairs(labels, predictions, _PAIRS.value)
    images, _ = run.split(_SPLIT.value)
    plots.save(
        plots.plot_confused_pairs(np.asarray(images), labels, predictions, pairs),
        out / f"confused_pairs_{name}.png",
    )
    report = f"# Most confused digit pairs, {_SPLIT.value}, step {step}\n\n"
    report += writers.markdown_table(pairs) if pairs else "No mistakes.\n"
    (out / f"confused_pairs_{name}.md").write_text(report)
    print(report, end="")
    print(
        f"Wrote confusion_matrix_{name}.png/.csv and confused_pairs_{name}.md/.png to {out}"
    )


if __name__ == "__main__":
    cli.run(main)
