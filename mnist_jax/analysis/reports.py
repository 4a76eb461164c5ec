"""The `experiments/` scripts' reports as functions, for a notebook or a test: each
reads finished workdirs, writes its tables and figures, and returns what it found.

Every report scores checkpoints on the run's own data (`analysis.load_run`):
`data_path` points at it when it has moved since training, and data other than the
run's is refused in one line.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mnist_jax import plots
from mnist_jax.analysis import runs as analysis
from mnist_jax.core import metrics
from mnist_jax.errors import UserError
from mnist_jax.platform import startup
from mnist_jax.run import checkpoints, writers

COMPARISON_FILE = "comparison.md"

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class Report:
    """What a report wrote: its folder, the files' names, its rows and the markdown
    the scripts print."""

    folder: Path
    files: tuple[str, ...]
    rows: list[dict]
    markdown: str


def weight_evolution(
    workdir: PathLike,
    steps: Sequence[int] | None = None,
    units: int = 12,
    out: PathLike | None = None,
    data_path: PathLike | None = None,
) -> Report:
    """How the first layer changes between checkpoints (default: the run's kept
    `checkpoint.steps`): `weight_evolution.png` (rows = units, columns = steps) and
    `weight_evolution.csv` / `.md` (one row per step, `analysis.unit_table`) in
    `out`, default `WORKDIR/analysis`."""
    run = analysis.load_run(workdir, data_path)
    if steps:
        steps = [int(s) for s in steps]
    else:
        steps = [s for s in run.config.checkpoint.steps if s in run.steps] or run.steps
    params = {step: run.params_at(step) for step in steps}
    rows = analysis.unit_table(run, params)
    folder = analysis.output_dir(run.workdir, out)
    table = writers.markdown_table(rows)

    pd = startup.pandas()
    pd.DataFrame(rows).to_csv(folder / "weight_evolution.csv", index=False)
    (folder / "weight_evolution.md").write_text(table)
    files = ("weight_evolution.csv", "weight_evolution.md")
    kernels = [analysis.first_layer_kernel(run.model(params[s])) for s in steps]
    if kernels[0] is not None:  # a model that shows its first layer (models.py)
        plots.save(
            plots.plot_weight_evolution(kernels, steps, units),
            folder / "weight_evolution.png",
        )
        files = ("weight_evolution.png", *files)
    return Report(folder, files, rows, table)


def confusion_report(
    workdir: PathLike,
    step: int | None = None,
    split: str = "val",
    pairs: int = 5,
    out: PathLike | None = None,
    data_path: PathLike | None = None,
) -> Report:
    """The confusion matrix of the checkpoint at `step` (default: the latest) on
    `split` ('val' or 'test'), and the `pairs` digit pairs it confuses most:
    `confusion_matrix_step{N}_{split}.png` / `.csv` (counts) and
    `confused_pairs_step{N}_{split}.md` / `.png` in `out`, default `WORKDIR/analysis`.
    The rows are the confused pairs."""
    step = checkpoints.check_step(workdir, step)
    run = analysis.load_run(workdir, data_path)
    scores = run.predict(run.params_at(step), split)
    labels, predictions = scores["labels"], scores["predictions"]
    counts = np.asarray(metrics.confusion_matrix(labels, predictions))
    normalized = np.asarray(metrics.normalize_rows(counts))
    folder = analysis.output_dir(run.workdir, out)
    name = f"step{step}_{split}"

    title = (
        f"{split} at step {step}: {metrics.PRIMARY.replace('_', ' ')} "
        f"{scores[metrics.PRIMARY]:.4f} (row-normalised)"
    )
    plots.save(
        plots.plot_confusion_matrix(normalized, title),
        folder / f"confusion_matrix_{name}.png",
    )
    header = "true\\predicted," + ",".join(map(str, range(10)))
    np.savetxt(
        folder / f"confusion_matrix_{name}.csv",
        np.column_stack([np.arange(10), counts]),
        fmt="%d",
        delimiter=",",
        header=header,
        comments="",
    )
    confused = analysis.confused_pairs(labels, predictions, pairs)
    images, _ = run.split(split)
    plots.save(
        plots.plot_confused_pairs(np.asarray(images), labels, predictions, confused),
        folder / f"confused_pairs_{name}.png",
    )
    report = f"# Most confused digit pairs, {split}, step {step}\n\n"
    report += writers.markdown_table(confused) if confused else "No mistakes.\n"
    (folder / f"confused_pairs_{name}.md").write_text(report)
    files = tuple(
        f"{kind}_{name}.{ext}"
        for kind, ext in (
            ("confusion_matrix", "png"),
            ("confusion_matrix", "csv"),
            ("confused_pairs", "md"),
            ("confused_pairs", "png"),
        )
    )
    return Report(folder, files, confused, report)


def default_comparison_dir() -> Path:
    """`./comparison-YYYYMMDD-HHMMSS` (with `-2`, `-3`... if taken): a new folder
    in the current directory for each comparison."""
    base = Path(f"comparison-{time.strftime('%Y%m%d-%H%M%S')}")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def compare_runs(
    workdirs: Sequence[PathLike],
    names: Sequence[str] | None = None,
    out: PathLike | None = None,
    data_path: PathLike | None = None,
    overwrite: bool = False,
) -> Report:
    """Finished runs side by side: `comparison.md` (one row per run: its model,
    optimizer and every metric of its results.json, links to the figures),
    `comparison_{metric}.png` (overlaid curves of each metric that draws one:
    `comparison_log_loss.png`) and `comparison_confusion.png` (validation confusion at
    each run's latest checkpoint) in `out`, default `default_comparison_dir()`. A
    folder that already holds a comparison.md is refused unless `overwrite`."""
    folder = Path(out) if out is not None else default_comparison_dir()
    if (folder / COMPARISON_FILE).exists() and not overwrite:
        raise UserError(
            f"{folder} already holds a {COMPARISON_FILE}; choose another --out, or "
            "pass --overwrite to replace it"
        )
    shared = analysis.Shared()  # runs on the same data read it once
    runs = [analysis.load_run(w, data_path, shared=shared) for w in workdirs]
    names = list(names or [f"{r.config.model.name} ({r.workdir.name})" for r in runs])
    if len(names) != len(runs):
        raise UserError(f"--names has {len(names)} labels for {len(runs)} workdirs")

    rows, histories, confusions = [], {}, {}
    for name, run in zip(names, runs, strict=True):
        results_path = run.workdir / "results.json"
        if not results_path.is_file():
            raise UserError(f"{run.workdir}: no results.json (did the run finish?)")
        results = writers.read_results(results_path)
        rows.append(
            {
                "run": name,
                "model": run.config.model.name,
                "optimizer": run.config.optim.name,
                **{k: results[k] for k in metrics.keys("val", "test")},
                "num_steps": results["num_steps"],
            }
        )
        histories[name] = writers.read_metrics(run.workdir)
        scores = run.predict(run.params_at(run.steps[-1]), "val")
        counts = metrics.confusion_matrix(scores["labels"], scores["predictions"])
        confusions[name] = np.asarray(metrics.normalize_rows(counts))

    folder.mkdir(parents=True, exist_ok=True)
    curves = [name for name, metric in metrics.METRICS.items() if metric.curve]
    for name in curves:
        figure = plots.plot_curve_overlay(histories, name)
        plots.save(figure, folder / f"comparison_{name}.png")
    plots.save(
        plots.plot_confusion_matrices(confusions), folder / "comparison_confusion.png"
    )
    figures = [f"comparison_{name}.png" for name in [*curves, "confusion"]]
    report = "# Model comparison\n\n" + writers.markdown_table(rows) + "\n"
    report += "\n\n".join(f"![{f}]({f})" for f in figures) + "\n"
    (folder / COMPARISON_FILE).write_text(report)
    return Report(folder, (COMPARISON_FILE, *figures), rows, report)
