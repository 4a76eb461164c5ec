"""What a sweep leaves behind: the per-member table, a plot of validation accuracy over
the main axes (seeds as error bars), and the best setting as a ready-to-run config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from ml_collections import ConfigDict

from mnist_jax import config_schema, plots, writers

SEED = "seed"


def settings_table(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean and spread over seeds of each setting (the non-seed axes)."""
    settings = [a for a in axes if a != SEED]
    grouped = (
        table.groupby(settings, sort=False) if settings else table.groupby(lambda _: 0)
    )
    summary = grouped.agg(
        val_accuracy=("val/accuracy", "mean"),
        val_accuracy_std=("val/accuracy", "std"),
        val_log_loss=("val/log_loss", "mean"),
        test_accuracy=("test/accuracy", "mean"),
        seeds=("val/accuracy", "size"),
    )
    return summary.reset_index().fillna({"val_accuracy_std": 0.0})


def plot_sweep(summary: pd.DataFrame, settings: list[str]) -> Figure:
    """Validation accuracy over the first axis, a line per value of the second."""
    fig = Figure(figsize=(7, 4.5))
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.92)
    ax = fig.add_subplot()
    x_name = settings[0] if settings else None
    lines = (
        summary.groupby(settings[1], sort=False)
        if len(settings) > 1
        else [(None, summary)]
    )
    for value, part in lines:
        label = f"{settings[1]}={value}" if value is not None else "mean over seeds"
        x = part[x_name].to_numpy() if x_name else np.zeros(len(part))
        ax.errorbar(
            x,
            part["val_accuracy"],
            yerr=part["val_accuracy_std"],
            marker="o",
            capsize=3,
            label=label,
        )
    if x_name:
        values = summary[x_name].to_numpy()
        numeric = np.issubdtype(values.dtype, np.number)
        if numeric and values.min() > 0 and values.max() / values.min() >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(x_name)
    ax.set(
        ylabel="validation accuracy",
        title="Sweep: validation accuracy (error bars: seeds)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def best_config_source(config, note: str) -> str:
    lines = [
        f'"""{note}"""',
        "",
        "from mnist_jax import config_schema",
        "",
        "",
        "def get_config(arg=None):",
        "    config = config_schema.default_config()",
    ]
    for name, value in config_schema.leaves(config):
        lines.append(f"    config.{name} = {value!r}")
    lines.append('    return config_schema.smoke(config) if arg == "smoke" else config')
    return "\n".join(lines) + "\n"


def write(workdir: Path, config, members: list, rows: list[dict]) -> dict:
    """Writes sweep.csv/.md/.png and best_config.py/.json; returns the best setting."""
    from mnist_jax.sweep import axes

    names = list(axes(config))
    table = pd.DataFrame(
        [{k: v for k, v in row.items() if k != "history"} for row in rows]
    )
    table.to_csv(workdir / "sweep.csv", index=False)
    (workdir / "sweep.md").write_text(writers.markdown_table(table.to_dict("records")))
    writers.write_json(
        workdir / "sweep_histories.json",
        {str(row["member"]): row["history"] for row in rows},
    )
    summary = settings_table(table, names)
    settings = [n for n in names if n != SEED]
    plots.save(plot_sweep(summary, settings), workdir / "sweep.png")

    order = summary.sort_values(
        ["val_accuracy", "val_log_loss"], ascending=[False, True]
    )
    best = summary.loc[order.index[0]]
    # The members' own values: a summary row holds them as floats (batch 100.0).
    hparams, member_config = next(
        (h, c) for h, c in members if all(h[n] == best[n] for n in settings)
    )
    best_setting = {n: hparams[n] for n in settings}
    best_config = ConfigDict(member_config.to_dict())
    best_config.seed = config.seed
    note = (
        f"Best setting of the sweep in {workdir}: {best_setting or 'the base config'}, "
        f"mean validation accuracy {best['val_accuracy']:.4f} over {int(best['seeds'])} "
        f"seed(s), test accuracy {best['test_accuracy']:.4f}.\n\n"
        f"    python -m mnist_jax.main --config={workdir / 'best_config.py'} --workdir=runs/best\n"
    )
    (workdir / "best_config.py").write_text(best_config_source(best_config, note))
    writers.write_json(workdir / "best_config.json", best_config.to_dict())
    return best_setting
