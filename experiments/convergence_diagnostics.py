"""Convergence diagnostics of a run's checkpoints, of two runs, or of sweep members:
loss along straight paths (and its barrier), 2-D loss slices, Hessian sharpness,
linear CKA of hidden representations, and accuracy per digit with churn.

    python experiments/convergence_diagnostics.py --workdir=RUN
    python experiments/convergence_diagnostics.py --workdirs=SEED0,SEED1
    python experiments/convergence_diagnostics.py --workdir=SWEEP --members=0,3 \\
        [--steps=10,100,1000] [--diagnostics=sharpness,per_class] [--out=DIR]

Writes `diagnostics.md` / `.csv` / `.json` and `diagnostics_*.png` into the first
workdir's `analysis/` or `--out`, with a progress line per stage on stderr. Paths and
churn between runs compare the first run with up to `--pairs` others, on the first
run's rows. In a notebook: `mnist_jax.analysis.diagnostics.convergence_diagnostics`.
"""

import sys

from absl import flags

from mnist_jax import cli
from mnist_jax.analysis import diagnostics

DEFAULTS = diagnostics.Settings()

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's or a sweep's workdir.")
_WORKDIRS = flags.DEFINE_list("workdirs", None, "Several runs' workdirs (e.g. seeds).")
_MEMBERS = flags.DEFINE_list("members", None, "A sweep's members; default all.")
_STEPS = flags.DEFINE_list("steps", None, "Checkpoint steps; default the kept steps.")
_DIAGNOSTICS = flags.DEFINE_list(
    "diagnostics",
    list(diagnostics.STAGES),
    "What to measure, of: " + ", ".join(diagnostics.STAGES),
)
_PATH_POINTS = flags.DEFINE_integer(
    "path_points",
    DEFAULTS.path_points,
    "Points per path.",
    lower_bound=2,
    upper_bound=1001,
)
_GRID_POINTS = flags.DEFINE_integer(
    "grid_points",
    DEFAULTS.grid_points,
    "Points per side of a slice.",
    lower_bound=2,
    upper_bound=201,
)
_HESSIAN_ROWS = flags.DEFINE_integer(
    "hessian_rows",
    DEFAULTS.hessian_rows,
    "Training rows the Hessian is measured on.",
    lower_bound=1,
)
_TOP_K = flags.DEFINE_integer(
    "top_k", DEFAULTS.top_k, "Hessian eigenvalues.", lower_bound=1, upper_bound=64
)
_LANCZOS_ITERATIONS = flags.DEFINE_integer(
    "lanczos_iterations",
    DEFAULTS.lanczos_iterations,
    "Lanczos steps (Hessian-vector products) for the top eigenvalues.",
    lower_bound=2,
    upper_bound=1000,
)
_TRACE_PROBES = flags.DEFINE_integer(
    "trace_probes",
    DEFAULTS.trace_probes,
    "Rademacher probes for the trace, outside the Krylov space; 0: no trace.",
    lower_bound=0,
    upper_bound=3000,
)
_PAIRS = flags.DEFINE_integer(
    "pairs",
    DEFAULTS.pairs,
    "Runs compared with the first.",
    lower_bound=0,
    upper_bound=64,
)
_SEED = flags.DEFINE_integer("seed", DEFAULTS.seed, "Probes' and directions' seed.")
_OUT = flags.DEFINE_string("out", None, "Output folder; default WORKDIR/analysis.")
_DATA_PATH = flags.DEFINE_string(
    "data_path", None, "Folder with the runs' data, if moved since training."
)
for _name in ("steps", "members"):
    flags.register_validator(
        _name,
        lambda values: values is None or all(v.strip().isdigit() for v in values),
        f"--{_name} must be non-negative integers, e.g. 10,100,1000",
    )
flags.register_validator(
    "diagnostics",
    lambda names: bool(names) and set(names) <= set(diagnostics.STAGES),
    f"--diagnostics must name some of {', '.join(diagnostics.STAGES)}",
)
flags.register_multi_flags_validator(
    ["workdir", "workdirs"],
    lambda f: (f["workdir"] is None) != (f["workdirs"] is None),
    "give exactly one of --workdir (a run or a sweep) and --workdirs (several runs)",
)


def main(argv) -> None:
    settings = diagnostics.Settings(
        path_points=_PATH_POINTS.value,
        grid_points=_GRID_POINTS.value,
        top_k=_TOP_K.value,
        lanczos_iterations=_LANCZOS_ITERATIONS.value,
        trace_probes=_TRACE_PROBES.value,
        hessian_rows=_HESSIAN_ROWS.value,
        pairs=_PAIRS.value,
        seed=_SEED.value,
    )
    report = diagnostics.convergence_diagnostics(
        _WORKDIRS.value or [_WORKDIR.value],
        members=[int(m) for m in _MEMBERS.value] if _MEMBERS.value else None,
        steps=[int(s) for s in _STEPS.value] if _STEPS.value else None,
        stages=_DIAGNOSTICS.value,
        settings=settings,
        out=_OUT.value,
        data_path=_DATA_PATH.value,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(report.markdown, end="")
    print(f"Wrote {', '.join(report.files)} to {report.folder}")


if __name__ == "__main__":
    cli.run(main)
