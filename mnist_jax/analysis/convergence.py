"""Convergence across a sweep's settings: every member restored at each kept checkpoint
step, scored on its own validation rows, and summarised per setting over seeds (the
notebook's question, "how good is each learning rate after 10, 100, 1000 steps?")."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mnist_jax import plots
from mnist_jax.analysis import diagnostics, reports
from mnist_jax.analysis import runs as analysis
from mnist_jax.core import metrics
from mnist_jax.errors import UserError
from mnist_jax.platform import startup
from mnist_jax.run import workdir as workdir_lib
from mnist_jax.run import writers
from mnist_jax.sweep import members as sweep_members
from mnist_jax.sweep import report as sweep_report

SEED = "seed"
# What the table reports per checkpoint: validation metrics, first-layer movement and
# sharpness (the training loss's top Hessian eigenvalue, `diagnostics.curvature`).
MEASURES = (*metrics.keys("val"), "l2_from_init", "sharpness")
SHARPNESS = diagnostics.Settings(top_k=1, trace_probes=0)
FILES = ("convergence.csv", "convergence.md", "convergence.png")


def member_rows(
    workdir: Path, data_path: str | os.PathLike | None = None
) -> tuple[list[dict], list[str]]:
    """(one row per member and kept checkpoint step: the member's swept values, the
    step and `MEASURES`; the swept axes' names)."""
    table = workdir / "sweep.csv"
    config_path = workdir / workdir_lib.CONFIG_FILE
    if not table.is_file() or not config_path.is_file():
        raise UserError(f"{workdir}: no sweep.csv; is it a finished sweep's folder?")
    saved = writers.read_json(config_path)
    axes = list(analysis.saved_axes(saved.get("sweep") or {}))
    members = startup.pandas().read_csv(table).to_dict("records")
    rows, shared = [], analysis.Shared()  # data and block checkpoints read once
    for member in members:
        run = analysis.load_run(
            sweep_members.folder(workdir, member["member"]), data_path, shared=shared
        )
        kept = [s for s in run.config.checkpoint.steps if s in run.steps]
        params = {step: run.params_at(step) for step in kept or run.steps}
        for row in analysis.unit_table(run, params):
            top, _ = diagnostics.curvature(run, params[row["step"]], SHARPNESS)
            row["sharpness"] = float(top[0])
            rows.append(
                {
                    **{a: member[a] for a in axes},
                    "step": row["step"],
                    **{m: row.get(m, float("nan")) for m in MEASURES},
                }
            )
    return rows, axes


def sweep_convergence(
    workdir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    data_path: str | os.PathLike | None = None,
) -> reports.Report:
    """`convergence.csv` / `.md` (per setting and checkpoint step: mean and std over
    seeds of `MEASURES`) and `convergence.png` (the first swept value on x, one line
    per step, seeds as error bars) in `out`, default `SWEEP/analysis`."""
    workdir = Path(workdir)
    rows, axes = member_rows(workdir, data_path)
    settings = [a for a in axes if a != SEED]
    pd = startup.pandas()
    frame = pd.DataFrame(rows)
    grouped = frame.groupby([*settings, "step"], sort=True)
    columns = {}
    for measure in MEASURES:
        columns[f"{measure} mean"] = (measure, "mean")
        columns[f"{measure} std"] = (measure, "std")
    summary = grouped.agg(**columns, seeds=("step", "size")).reset_index()
    summary = summary.fillna({c: 0.0 for c in columns if c.endswith(" std")})
    records = summary.to_dict("records")
    folder = analysis.output_dir(workdir, out)
    writers.write_text(folder / FILES[0], summary.to_csv(index=False))
    markdown = writers.markdown_table(records)
    writers.write_text(folder / FILES[1], markdown)
    plots.save(plot_convergence(summary, settings), folder / FILES[2])
    return reports.Report(folder, FILES, records, markdown)


def plot_convergence(summary, settings: list[str]):
    """One panel per measure: the first setting on x (log-scaled when its values span
    a factor of 10 or more, as learning rates do), a line per checkpoint step (and
    value of any further setting), seeds as error bars."""
    fig = plots.new_figure(figsize=(5 * len(MEASURES), 4.2))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.88, wspace=0.25)
    x_name = settings[0] if settings else None
    others = settings[1:]
    lines = summary.groupby(["step", *others], sort=True)
    for n, measure in enumerate(MEASURES):
        ax = fig.add_subplot(1, len(MEASURES), n + 1)
        for key, part in lines:
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(
                f"{name}={value}"
                for name, value in zip(["step", *others], key, strict=True)
            )
            x = (
                sweep_report.x_positions(part[x_name], summary[x_name])
                if x_name
                else np.zeros(len(part))
            )
            ax.errorbar(
                x,
                part[f"{measure} mean"],
                yerr=part[f"{measure} std"],
                marker="o",
                capsize=3,
                label=label,
            )
        if x_name:
            sweep_report.label_x_axis(ax, x_name, summary[x_name])
        ax.set_title(measure)
        ax.grid(alpha=0.3)
        if n == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Convergence across settings (error bars: std over seeds)")
    return fig
