"""Several runs side by side (e.g. the linear model against the MLP): the notebook's
second learning goal.

    python experiments/compare_models.py --workdirs=W1,W2[,...] [--names=linear,mlp]

Writes `comparison.md` (accuracy and log-loss table, links to the figures),
`comparison_log_loss.png` (overlaid curves) and `comparison_confusion.png` (validation
confusion matrices at each run's latest checkpoint) into `W1/analysis/` or `--out`.
"""

import json
from pathlib import Path

import numpy as np
from absl import flags

from mnist_jax import analysis, cli, metrics, plots, writers
from mnist_jax.errors import UserError

_WORKDIRS = flags.DEFINE_list(
    "workdirs", None, "Run workdirs to compare.", required=True
)
_NAMES = flags.DEFINE_list("names", None, "Labels for the runs; default: model names.")
_OUT = flags.DEFINE_string(
    "out", None, "Output folder; default FIRST_WORKDIR/analysis."
)


def main(argv) -> None:
    workdirs = [Path(w) for w in _WORKDIRS.value]
    runs = [analysis.load_run(w) for w in workdirs]
    names = _NAMES.value or [f"{r.config.model.name} ({r.workdir.name})" for r in runs]
    if len(names) != len(runs):
        raise UserError(f"--names has {len(names)} labels for {len(runs)} workdirs")

    rows, histories, confusions = [], {}, {}
    for name, run in zip(names, runs, strict=True):
        results_path = run.workdir / "results.json"
        if not results_path.is_file():
            raise UserError(f"{run.workdir}: no results.json (did the run finish?)")
        results = json.loads(results_path.read_text())
        rows.append(
            {
                "run": name,
                **{
                    k: results[k]
                    for k in (
                        "val/accuracy",
                        "test/accuracy",
                        "val/log_loss",
                        "test/log_loss",
                        "num_steps",
                    )
                },
            }
        )
        histories[name] = writers.read_metrics(run.workdir)
        scores = run.predict(run.params_at(run.steps[-1]), "val")
        counts = metrics.confusion_matrix(scores["labels"], scores["predictions"])
        confusions[name] = np.asarray(metrics.normalize_rows(counts))

    out = analysis.output_dir(workdirs[0], _OUT.value)
    plots.save(plots.plot_log_loss_overlay(histories), out / "comparison_log_loss.png")
    plots.save(
        plots.plot_confusion_matrices(confusions), out / "comparison_confusion.png"
    )
    report = "# Model comparison\n\n" + writers.markdown_table(rows)
    report += "\n![log loss](comparison_log_loss.png)\n\n![confusion](comparison_confusion.png)\n"
    (out / "comparison.md").write_text(report)
    print(report, end="")
    print(f"Wrote comparison.md and its figures to {out}")


if __name__ == "__main__":
    cli.run(main)
