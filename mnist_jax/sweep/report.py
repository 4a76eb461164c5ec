"""What a sweep leaves behind: the per-member table, a plot of validation accuracy over
the main axes (seeds as error bars), and the best setting as a ready-to-run config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np
from ml_collections import ConfigDict

from mnist_jax import plots
from mnist_jax.config import schema as config_schema
from mnist_jax.core import metrics
from mnist_jax.platform import mesh, startup
from mnist_jax.run import writers

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

SEED = "seed"


def import_libraries() -> None:
    """pandas and matplotlib, slow to import: a sweep imports them while its programs
    compile."""
    startup.pandas()
    plots.new_figure()


def settings_table(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Each setting (the non-seed axes): every metric's mean over seeds, and the
    spread (std) of the validation ones."""
    settings = [a for a in axes if a != SEED]
    grouped = (
        table.groupby(settings, sort=False) if settings else table.groupby(lambda _: 0)
    )
    columns = {}
    for key in metrics.keys("val", "test"):
        columns[column(key)] = (key, "mean")
        if key.startswith("val/"):
            columns[column(key) + "_std"] = (key, "std")
    summary = grouped.agg(
        **columns, seeds=(metrics.key("val", metrics.PRIMARY), "size")
    )
    stds = [c for c in summary.columns if c.endswith("_std")]
    return summary.reset_index().fillna(dict.fromkeys(stds, 0.0))


def column(key: str) -> str:
    """`val/accuracy` -> `val_accuracy`: a metric key as a summary table's column."""
    return key.replace("/", "_")


def plot_sweep(summary: pd.DataFrame, settings: list[str]) -> Figure:
    """The primary metric on validation over the first axis, a line per value of the
    second."""
    primary = column(metrics.key("val", metrics.PRIMARY))
    fig = plots.new_figure(figsize=(7, 4.5))
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
        x = (
            x_positions(part[x_name], summary[x_name])
            if x_name
            else np.zeros(len(part))
        )
        ax.errorbar(
            x,
            part[primary],
            yerr=part[primary + "_std"],
            marker="o",
            capsize=3,
            label=label,
        )
    if x_name:
        label_x_axis(ax, x_name, summary[x_name])
    label = f"validation {metrics.PRIMARY.replace('_', ' ')}"
    ax.set(ylabel=label, title=f"Sweep: {label} (error bars: seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def x_positions(values: pd.Series, every: pd.Series) -> np.ndarray:
    """Where `values` of a swept field go on a figure's x axis: the values themselves
    when numeric, else their place among `every` value (a tuple of layer widths)."""
    if np.issubdtype(every.dtype, np.number):
        return values.to_numpy()
    categories = list(dict.fromkeys(map(str, every)))
    return np.asarray([categories.index(str(v)) for v in values])


def label_x_axis(ax, name: str, every: pd.Series) -> None:
    """The x axis of a swept field: log-scaled when its values span a factor of 10 or
    more (learning rates), the values as tick labels when not numeric."""
    if np.issubdtype(every.dtype, np.number):
        values = every.to_numpy()
        if values.min() > 0 and values.max() / values.min() >= 10:
            ax.set_xscale("log")
    else:
        categories = list(dict.fromkeys(map(str, every)))
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(name)


def best_config_source(config, note: str) -> str:
    lines = [
        f'"""{note}"""',
        "",
        "from mnist_jax.config import schema as config_schema",
        "",
        "",
        "def get_config(arg=None):",
        "    config = config_schema.default_config()",
    ]
    for name, value in config_schema.leaves(config):
        lines.append(f"    config.{name} = {value!r}")
    lines.append('    return config_schema.smoke(config) if arg == "smoke" else config')
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Written:
    """What `write` found and wrote: the console's closing lines."""

    best_setting: dict
    best_line: str
    settings_markdown: str
    paths: tuple[Path, ...]


def settings_markdown(summary: pd.DataFrame, settings: list[str]) -> str:
    """The per-setting table as markdown: every validation metric as mean ± std over
    seeds, the test means, and the number of seeds."""
    rows = []
    for setting in summary.to_dict("records"):  # each column keeps its type
        row = {n: setting[n] for n in settings}
        for key in metrics.keys("val"):
            mean, std = setting[column(key)], setting[column(key) + "_std"]
            row[key] = f"{writers.format_number(mean)} ± {writers.format_number(std)}"
        row |= {k: float(setting[column(k)]) for k in metrics.keys("test")}
        row["seeds"] = int(setting["seeds"])
        rows.append(row)
    return writers.markdown_table(rows)


def diverged_lines(rows: list[dict]) -> list[str]:
    return [
        f"member {row['member']} diverged at step {row['diverged_at_step']} "
        f"({', '.join(f'{k}={v}' for k, v in row.items() if _is_axis(k))})"
        for row in rows
        if "diverged_at_step" in row
    ]


def _is_axis(key: str) -> bool:
    return key not in ("member", "history", "diverged_at_step") and key not in set(
        metrics.keys("val", "test")
    )


def reproducibility_note(mesh_axes: dict | None, platform: str = "cpu") -> str:
    """What a single run of the best config reproduces, given the sweep's mesh."""
    layout = f"a mesh {mesh_axes}" if mesh_axes else "one device"
    if platform == "cpu":
        return (
            f"The sweep trained its members together (jax.vmap) on {layout} of CPU\n"
            "devices. On a CPU a member computes what the single run of its config\n"
            "computes, to the bit (tested with 2 devices x 8 members, batch 30 and\n"
            "100), so this config reproduces the member's numbers for its seed."
        )
    return (
        f"The sweep trained its members together (jax.vmap) on {layout} of\n"
        f"{platform} devices. A rerun or resume of the same sweep on the same mesh gives\n"
        "the same bits. A single run of this config is bitwise its member's on a CPU;\n"
        f"on {platform} that is untested: batched products may add up in another order,\n"
        "which training amplifies. Compare settings within one sweep."
    )


def write(
    workdir: Path,
    config,
    axes: list[str],
    members: list,
    rows: list[dict],
    mesh_axes: dict | None = None,
) -> Written:
    """Writes sweep.csv/.md/.png and best_config.py/.json (process 0 only); returns
    the best setting and the console's closing lines."""
    pd = startup.pandas()
    chief = mesh.is_chief()
    flat = [{k: v for k, v in row.items() if k != "history"} for row in rows]
    if any("diverged_at_step" in row for row in flat):
        flat = [
            {**row, "diverged_at_step": row.get("diverged_at_step", "")} for row in flat
        ]
    table = pd.DataFrame(flat)
    summary = settings_table(table, axes)
    settings = [n for n in axes if n != SEED]
    order = metrics.ranking("val")
    ranked = summary.sort_values(
        [column(k) for k, _ in order], ascending=[a for _, a in order]
    )
    best = summary.loc[ranked.index[0]]
    # The members' own values: a summary row holds them as floats (batch 100.0).
    hparams, member_config = next(
        (h, c) for h, c in members if all(h[n] == best[n] for n in settings)
    )
    best_setting = {n: hparams[n] for n in settings}
    best_config = ConfigDict(member_config.to_dict())
    best_config.seed = config.seed
    scores = ", ".join(
        f"{k} {writers.format_number(best[column(k)])}"
        for k in metrics.keys("val", "test")
    )
    best_line = (
        f"{best_setting or 'the base config'}; means over {int(best['seeds'])} "
        f"seed(s): {scores}"
    )
    names = ("sweep.csv", "sweep.md", "sweep_histories.json", "sweep.png")
    names += ("best_config.py", "best_config.json")
    paths = tuple(workdir / n for n in names)
    written = Written(
        best_setting, best_line, settings_markdown(summary, settings), paths
    )
    if not chief:
        return written

    writers.write_text(workdir / "sweep.csv", table.to_csv(index=False))
    markdown = writers.markdown_table(table.to_dict("records"))
    diverged = diverged_lines(rows)
    if diverged:
        markdown += "\n" + "".join(f"- {line}\n" for line in diverged)
    writers.write_text(workdir / "sweep.md", markdown)
    writers.write_json(
        workdir / "sweep_histories.json",
        {str(row["member"]): row["history"] for row in rows},
    )
    plots.save(plot_sweep(summary, settings), workdir / "sweep.png")
    note = (
        f"Best setting of the sweep in {workdir}: {best_line}.\n\n"
        f"    python -m mnist_jax.main --config={workdir / 'best_config.py'} --workdir=runs/best\n"
        f"\n{reproducibility_note(mesh_axes, jax.default_backend())}\n"
    )
    writers.write_text(
        workdir / "best_config.py", best_config_source(best_config, note)
    )
    writers.write_json(workdir / "best_config.json", best_config.to_dict())
    return written
