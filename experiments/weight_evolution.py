"""How the first layer changes between convergence levels, from one run's checkpoints.

    python experiments/weight_evolution.py --workdir=W [--steps=10,100,1000] [--units=12]

Writes `weight_evolution.png` (rows = units, columns = checkpoints, one symmetric colour
scale per unit) and `weight_evolution.csv` / `.md` (per checkpoint: validation accuracy
and log loss, L2 distance of the first-layer weights from init and from the previous
checkpoint, mean spatial smoothness, share of dead and ignored units) into
`W/analysis/` or `--out`.
"""

from absl import flags

from mnist_jax import analysis, cli, plots, writers

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir.", required=True)
_STEPS = flags.DEFINE_list(
    "steps", None, "Checkpoint steps; default: the run's kept steps."
)
_UNITS = flags.DEFINE_integer("units", 12, "First-layer units to draw.")
_OUT = flags.DEFINE_string("out", None, "Output folder; default WORKDIR/analysis.")


def main(argv) -> None:
    run = analysis.load_run(_WORKDIR.value)
    if _STEPS.value:
        steps = [int(s) for s in _STEPS.value]
    else:
        steps = [s for s in run.config.checkpoint.steps if s in run.steps] or run.steps
    params = {step: run.params_at(step) for step in steps}
    rows = analysis.unit_table(run, params)
    out = analysis.output_dir(run.workdir, _OUT.value)

    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "weight_evolution.csv", index=False)
    (out / "weight_evolution.md").write_text(writers.markdown_table(rows))
    kernels = [analysis.first_layer_kernel(run.model(params[s])) for s in steps]
    plots.save(
        plots.plot_weight_evolution(kernels, steps, _UNITS.value),
        out / "weight_evolution.png",
    )
    print(writers.markdown_table(rows), end="")
    print(f"Wrote weight_evolution.png, .csv and .md to {out}")


if __name__ == "__main__":
    cli.run(main)
