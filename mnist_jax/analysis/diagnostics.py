"""Convergence diagnostics of checkpoints: how a run's 10, 100 and 1000-step
checkpoints differ, and whether two runs (seeds, settings) end in the same basin.

For each run (a workdir, or a sweep's member) and each of its kept steps:
- `per_class`: validation accuracy per digit, and the share of predictions that
  change from the previous step (churn) and from the first run at the same step;
- `sharpness`: the top eigenvalues and the trace of the training loss's Hessian on a
  fixed, recorded subset of the run's training rows (`hessian.py`);
- `paths`: training and validation loss along the straight path between consecutive
  steps and between the first run and each other at every common step, and its
  barrier (`landscape.py`);
- `slice`: the loss on a 2-D slice along filter-normalised directions around each
  of the first run's checkpoints;
- `cka`: linear CKA between hidden representations on the validation images, across
  one run's steps and across runs at their last common step (`similarity.py`).

`convergence_diagnostics` writes `diagnostics.md` / `.csv` / `.json` and a figure per
diagnostic; each piece is a function a notebook can call on its own.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from mnist_jax import plots
from mnist_jax.analysis import hessian, landscape, reports, similarity
from mnist_jax.analysis import runs as analysis
from mnist_jax.errors import UserError
from mnist_jax.platform import startup
from mnist_jax.run import checkpoints, identity, writers
from mnist_jax.run import workdir as workdir_lib
from mnist_jax.sweep import members as sweep_members

STAGES = ("per_class", "sharpness", "paths", "slice", "cka")
FILES = {
    "table": "diagnostics.csv",
    "markdown": "diagnostics.md",
    "json": "diagnostics.json",
    "paths": "diagnostics_paths.png",
    "slice": "diagnostics_slices.png",
    "cka": "diagnostics_cka.png",
    "per_class": "diagnostics_per_class.png",
}
# What the figures draw at most; the tables and diagnostics.json hold everything.
FIGURE_RUNS = 8  # runs in the per-digit heatmap
FIGURE_PANELS = 6  # panels of paths: the runs' own first, then between runs


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every choice that changes a number; written to diagnostics.json."""

    path_points: int = 25  # points on each straight path, endpoints included
    grid_points: int = 21  # per side of a 2-D slice
    grid_extent: float = 1.0  # a slice spans [-extent, extent] along each direction
    top_k: int = hessian.TOP_K
    lanczos_iterations: int = hessian.LANCZOS_ITERATIONS
    trace_probes: int = hessian.TRACE_PROBES  # 0: no trace
    hessian_rows: int = 2_500  # the first rows of the run's training rows
    pairs: int = 4  # runs compared with the first one, by path, churn and CKA
    seed: int = 0  # the Lanczos start, Hutch++ probes and the slices' directions


@dataclasses.dataclass
class Subject:
    """A run under study: a label (its folder, or a member's swept values), its view
    and the steps studied."""

    label: str
    run: analysis.RunView
    steps: list[int]
    _restored: dict = dataclasses.field(default_factory=dict, repr=False)

    def params(self, step: int):
        """The checkpoint at `step`, read once."""
        if step not in self._restored:
            self._restored[step] = self.run.params_at(step)
        return self._restored[step]


def is_sweep(folder: str | os.PathLike) -> bool:
    return (Path(folder) / "sweep.csv").is_file()


def load_subjects(
    workdirs: Sequence[str | os.PathLike],
    members: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    data_path: str | os.PathLike | None = None,
) -> list[Subject]:
    """The runs in `workdirs` (a sweep folder stands for its `members`, default all),
    each at `steps` (default its kept `checkpoint.steps`); a step one of them did not
    keep is one line naming the steps it has."""
    shared, subjects = analysis.Shared(), []
    for workdir in workdirs:
        workdir = Path(workdir)
        if is_sweep(workdir):
            for index, label in sweep_labels(workdir, members):
                folder = sweep_members.folder(workdir, index)
                subjects.append(_subject(folder, label, steps, data_path, shared))
        else:
            if members:
                raise UserError(f"{workdir}: --members selects a sweep's members")
            subjects.append(_subject(workdir, workdir.name, steps, data_path, shared))
    labels = [s.label for s in subjects]
    for subject in subjects:  # two folders of the same name: their paths tell apart
        if labels.count(subject.label) > 1:
            subject.label = str(subject.run.workdir)
    return subjects


def _subject(folder, label, steps, data_path, shared) -> Subject:
    run = analysis.load_run(folder, data_path, shared=shared)
    if steps:
        for step in steps:
            checkpoints.check_step(run.workdir, step, run.steps)
        chosen = sorted(set(steps))
    else:
        kept = [s for s in run.config.checkpoint.steps if s in run.steps]
        chosen = kept or run.steps
    return Subject(label, run, chosen)


def sweep_labels(sweep: Path, members: Sequence[int] | None) -> list[tuple[int, str]]:
    """(member index, "axis=value ...") of the chosen members, from sweep.csv: the
    values of the axes with more than one."""
    saved = writers.read_json(sweep / workdir_lib.CONFIG_FILE)
    axes = list(analysis.saved_axes(saved.get("sweep") or {}))
    rows = startup.pandas().read_csv(sweep / "sweep.csv").to_dict("records")
    axes = [a for a in axes if len({r[a] for r in rows}) > 1]  # what tells them apart
    by_index = {int(r["member"]): r for r in rows}
    chosen = list(members) if members else sorted(by_index)
    unknown = [m for m in chosen if m not in by_index]
    if unknown:
        raise UserError(
            f"{sweep}: no member {', '.join(map(str, unknown))}; members are "
            f"0..{max(by_index)} (sweep.csv)"
        )
    return [
        (m, " ".join(f"{a.split('.')[-1]}={by_index[m][a]}" for a in axes) or str(m))
        for m in chosen
    ]


def hessian_rows(run: analysis.RunView, num_rows: int) -> np.ndarray:
    """The pool rows the Hessian is measured on: the first `num_rows` of the run's
    training rows, in the run's own order (recorded in diagnostics.json)."""
    return np.asarray(run.member.train_idx[:num_rows])


def curvature(
    run: analysis.RunView, params, settings: Settings = Settings()
) -> tuple[np.ndarray, float]:
    """(top `top_k` eigenvalues, trace) of the run's training-loss Hessian at
    `params`, on `hessian_rows`."""
    rows = hessian_rows(run, settings.hessian_rows)
    measure = hessian.curvature(
        run.program, settings.top_k, settings.lanczos_iterations, settings.trace_probes
    )
    key = jax.random.key(settings.seed)
    top, trace = measure(
        params, key, run.dataset.pool_x[rows], run.dataset.pool_y[rows]
    )
    return np.asarray(top), float(trace)


def check_comparable(subjects: list[Subject]) -> None:
    """A path between two runs needs the same model and the same data: one line
    naming the first run that differs from the first."""
    first = subjects[0]
    model = identity.flat_config(first.run.config.model.to_dict())
    for other in subjects[1:]:
        theirs = identity.flat_config(other.run.config.model.to_dict())
        differ = identity.changes(model, theirs)
        if differ:
            raise UserError(
                f"{other.run.workdir} is a different model from {first.run.workdir} "
                f"({'; '.join(differ)}): a path between runs needs the same model"
            )
        if other.run.host.content_sha256 != first.run.host.content_sha256:
            raise UserError(
                f"{other.run.workdir} was trained on other data than "
                f"{first.run.workdir} (sha256 {other.run.host.content_sha256[:12]} vs "
                f"{first.run.host.content_sha256[:12]}): a path between runs needs the "
                "same data"
            )


@dataclasses.dataclass
class Diagnostics:
    """Everything measured: the tables as rows, the curves, slices and matrices."""

    settings: Settings
    checkpoints: list[dict] = dataclasses.field(default_factory=list)
    per_class: list[dict] = dataclasses.field(default_factory=list)
    between_steps: list[dict] = dataclasses.field(default_factory=list)
    between_runs: list[dict] = dataclasses.field(default_factory=list)
    paths: list[dict] = dataclasses.field(default_factory=list)
    slices: list[dict] = dataclasses.field(default_factory=list)
    cka: list[dict] = dataclasses.field(default_factory=list)
    runs: list[dict] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def diagnose(
    subjects: list[Subject],
    stages: Sequence[str] = STAGES,
    settings: Settings = Settings(),
    progress: Callable[[str], None] | None = None,
) -> Diagnostics:
    """Runs `stages` (a subset of `STAGES`) on `subjects`; `progress` gets a line as
    each stage ends."""
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise UserError(
            f"unknown diagnostics {unknown}; choose from {', '.join(STAGES)}"
        )
    others = subjects[1 : 1 + settings.pairs]
    if "paths" in stages and others:
        check_comparable([subjects[0], *others])
    found = Diagnostics(settings)
    rows = {
        (s.label, t): {"run": s.label, "step": t} for s in subjects for t in s.steps
    }
    num_checkpoints = len(rows)
    predicted = {}

    def read():
        for s in subjects:
            found.runs.append(
                {
                    "label": s.label,
                    "workdir": str(s.run.workdir),
                    "steps": s.steps,
                    "data_sha256": s.run.host.content_sha256,
                    "hessian_rows": hessian_rows(s.run, settings.hessian_rows).tolist(),
                }
            )
        predicted.update(_scores(subjects, rows))

    def sharpness():
        for s in subjects:
            for step in s.steps:
                top, trace = curvature(s.run, s.params(step), settings)
                for i, value in enumerate(top):
                    rows[s.label, step][f"hessian_top_{i + 1}"] = float(value)
                if settings.trace_probes:
                    rows[s.label, step]["hessian_trace"] = trace

    work = {
        "read": (
            read,
            lambda: f"{num_checkpoints} checkpoints of {len(subjects)} run(s)",
        ),
        "per_class": (
            lambda: _per_class(subjects, predicted, rows, found),
            lambda: "accuracy per digit and churn",
        ),
        "sharpness": (sharpness, lambda: f"Hessian at {num_checkpoints} checkpoints"),
        "paths": (
            lambda: _paths(subjects, others, found),
            lambda: f"{len(found.paths)} straight paths",
        ),
        "slice": (
            lambda: _slices(subjects[0], found),
            lambda: f"{len(found.slices)} 2-D slices",
        ),
        "cka": (lambda: _cka(subjects, others, found), lambda: "linear CKA"),
    }
    for name, (measure, describe) in work.items():
        if name == "read" or name in stages:
            started = time.perf_counter()
            measure()
            found.seconds[name] = time.perf_counter() - started
            if progress is not None:
                progress(f"{name}: {describe()} in {found.seconds[name]:.1f} s")
    found.checkpoints = list(rows.values())
    return found


def _scores(subjects, rows) -> dict:
    """Validation predictions of every checkpoint, and its metrics into `rows`."""
    predicted = {}
    for s in subjects:
        for step in s.steps:
            p = s.run.predict(s.params(step), "val")
            predicted[s.label, step] = p
            rows[s.label, step] |= {
                "val/accuracy": p["accuracy"],
                "val/log_loss": p["log_loss"],
            }
    return predicted


def _per_class(subjects, predicted, rows, found: Diagnostics) -> None:
    for s in subjects:
        previous = None
        for step in s.steps:
            p = predicted[s.label, step]
            accuracy = similarity.per_class_accuracy(p["labels"], p["predictions"])
            found.per_class.append(
                {
                    "run": s.label,
                    "step": step,
                    **{str(d): float(a) for d, a in enumerate(accuracy)},
                }
            )
            if previous is not None:
                rows[s.label, step]["churn_from_previous"] = similarity.churn(
                    previous, p["predictions"]
                )
            previous = p["predictions"]
    first = subjects[0]
    for other in subjects[1 : 1 + found.settings.pairs]:
        for step in sorted(set(first.steps) & set(other.steps)):
            # On the first run's validation images: two seeds may split differently.
            mine = predicted[first.label, step]["predictions"]
            x, _ = first.run.split("val")
            theirs = other.run.classes(other.params(step), x)
            _between_runs(found, first, other, step)["churn"] = similarity.churn(
                mine, theirs
            )


def _between_runs(found, first, other, step) -> dict:
    for row in found.between_runs:
        if (
            row["from"] == first.label
            and row["to"] == other.label
            and row["step"] == step
        ):
            return row
    row = {"from": first.label, "to": other.label, "step": step}
    found.between_runs.append(row)
    return row


def _between_steps(found, s, a, b) -> dict:
    for row in found.between_steps:
        if row["run"] == s.label and row["from_step"] == a and row["to_step"] == b:
            return row
    row = {"run": s.label, "from_step": a, "to_step": b}
    found.between_steps.append(row)
    return row


def _path(found, run, a, b, kind: str, group: str, segment: str) -> dict:
    """The path from params `a` to `b`, scored on `run`'s rows; `kind` ("steps" or
    "runs"), `group` and `segment` say where the figure draws it."""
    curve = landscape.path_metrics(
        run.program, a, b, run.dataset, run.member, found.settings.path_points
    )
    path = {
        "kind": kind,
        "group": group,
        "segment": segment,
        **{k: v.tolist() for k, v in curve.items()},
    }
    for split in ("train", "val"):
        path[f"{split}_barrier"] = landscape.barrier(
            curve[f"{split}/log_loss"], curve["alpha"]
        )
    found.paths.append(path)
    return path


def _paths(subjects, others, found: Diagnostics) -> None:
    for s in subjects:
        for a, b in zip(s.steps[:-1], s.steps[1:], strict=True):
            path = _path(
                found, s.run, s.params(a), s.params(b), "steps", s.label, f"{a}->{b}"
            )
            _between_steps(found, s, a, b).update(
                train_barrier=path["train_barrier"], val_barrier=path["val_barrier"]
            )
    first = subjects[0]
    for other in others:
        group = f"{first.label} -> {other.label}"
        for step in sorted(set(first.steps) & set(other.steps)):
            # Scored on the first run's rows.
            path = _path(
                found,
                first.run,
                first.params(step),
                other.params(step),
                "runs",
                group,
                f"step {step}",
            )
            _between_runs(found, first, other, step).update(
                train_barrier=path["train_barrier"], val_barrier=path["val_barrier"]
            )


def _slices(s: Subject, found: Diagnostics) -> None:
    settings = found.settings
    coords = landscape.grid_coords(settings.grid_points, settings.grid_extent)
    rows = hessian_rows(s.run, settings.hessian_rows)
    x, y = s.run.dataset.pool_x[rows], s.run.dataset.pool_y[rows]
    for step in s.steps:
        params = s.params(step)
        axis = landscape.filter_axis_of(s.run.model(params))
        keys = jax.random.split(jax.random.key(settings.seed), 2)
        directions = [
            landscape.filter_normalized_direction(k, params, axis) for k in keys
        ]
        loss = landscape.loss_surface(s.run.program, params, directions, coords, x, y)
        found.slices.append(
            {
                "run": s.label,
                "step": step,
                "title": f"{s.label} step {step}",
                "coords": coords.tolist(),
                "loss": loss.tolist(),
            }
        )


def _representations(s: Subject, step: int, x) -> dict[str, np.ndarray]:
    return similarity.representations(s.run.model(s.params(step)), x)


def _cka(subjects, others, found: Diagnostics) -> None:
    """Per layer: CKA across each run's steps (consecutive ones into the table) and
    between the first run and the others at their last common step."""
    for s in subjects:
        x, _ = s.run.split("val")
        layers = {step: _representations(s, step, x) for step in s.steps}
        for name in layers[s.steps[0]]:
            matrix = similarity.cka_matrix([layers[step][name] for step in s.steps])
            found.cka.append(
                {
                    "title": f"{s.label}: {name} across steps",
                    "layer": name,
                    "labels": [str(step) for step in s.steps],
                    "matrix": matrix.tolist(),
                }
            )
            for i in range(len(s.steps) - 1):
                row = _between_steps(found, s, s.steps[i], s.steps[i + 1])
                row[f"cka_{name}"] = float(matrix[i, i + 1])
    if not others:
        return
    group = [subjects[0], *others]
    x, _ = subjects[0].run.split("val")  # every run seen on the first run's images
    for step in sorted(set.intersection(*(set(s.steps) for s in group))):
        layers = [_representations(s, step, x) for s in group]
        for name in layers[0]:
            if not all(name in layer for layer in layers):
                continue  # models of different depths share only some layers
            matrix = similarity.cka_matrix([layer[name] for layer in layers])
            found.cka.append(
                {
                    "title": f"{name} across runs at step {step}",
                    "layer": name,
                    "step": step,
                    "labels": [s.label for s in group],
                    "matrix": matrix.tolist(),
                }
            )
            for j, other in enumerate(others, start=1):
                row = _between_runs(found, subjects[0], other, step)
                row[f"cka_{name}"] = float(matrix[0, j])


def write(found: Diagnostics, folder: Path) -> reports.Report:
    """The tables (csv: one row per checkpoint; md: every table) and the figures."""
    checkpoints_rows = found.checkpoints
    per_class = {(r["run"], r["step"]): r for r in found.per_class}
    csv_rows = [
        row
        | {
            f"val_accuracy_digit_{k}": v
            for k, v in per_class.get((row["run"], row["step"]), {}).items()
            if k not in ("run", "step")
        }
        for row in checkpoints_rows
    ]
    pd = startup.pandas()
    writers.write_text(
        folder / FILES["table"], pd.DataFrame(csv_rows).to_csv(index=False)
    )
    sections = [
        ("Checkpoints", checkpoints_rows),
        ("Validation accuracy per digit", found.per_class),
        ("Between consecutive steps", found.between_steps),
        ("Between runs", found.between_runs),
    ]
    markdown = "".join(
        f"## {title}\n\n{writers.markdown_table(_uniform(rows))}\n"
        for title, rows in sections
        if rows
    )
    writers.write_text(folder / FILES["markdown"], markdown)
    writers.write_json(folder / FILES["json"], dataclasses.asdict(found))
    files = [FILES["table"], FILES["markdown"], FILES["json"]]
    figures = []
    if found.paths:
        groups = list(dict.fromkeys(p["group"] for p in found.paths))[:FIGURE_PANELS]
        drawn_paths = [p for p in found.paths if p["group"] in groups]
        figures.append(("paths", lambda: plots.plot_loss_paths(drawn_paths)))
    if found.slices:
        figures.append(("slice", lambda: plots.plot_loss_slices(found.slices)))
    if found.cka:
        chosen = _figure_cka(found.cka)
        figures.append(("cka", lambda: plots.plot_similarity(chosen)))
    if found.per_class:
        shown = list(dict.fromkeys(r["run"] for r in found.per_class))[:FIGURE_RUNS]
        drawn = [r for r in found.per_class if r["run"] in shown]
        labels = [f"{r['run']} @ {r['step']}" for r in drawn]
        values = np.array([[r[str(d)] for d in range(10)] for r in drawn])
        figures.append(("per_class", lambda: plots.plot_per_class(labels, values)))
    for name, draw in figures:
        plots.save(draw(), folder / FILES[name])
        files.append(FILES[name])
    return reports.Report(folder, tuple(files), csv_rows, markdown)


def _uniform(rows: list[dict]) -> list[dict]:
    """Rows with every column any of them has (blank where one lacks it)."""
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return [{c: r.get(c, "") for c in columns} for r in rows]


def _figure_cka(cka: list[dict]) -> list[tuple[str, list[str], np.ndarray]]:
    """The heatmaps drawn: the deepest hidden layer (the last before the logits, else
    the logits) of the first run across steps, and across runs."""
    layers = list(dict.fromkeys(c["layer"] for c in cka))
    hidden = [name for name in layers if name != "logits"]
    layer = hidden[-1] if hidden else layers[0]
    chosen = [c for c in cka if c["layer"] == layer]
    across_steps = [c for c in chosen if c["title"].endswith("across steps")][:1]
    across_runs = [c for c in chosen if "across runs" in c["title"]][-1:]
    return [
        (c["title"], c["labels"], np.asarray(c["matrix"]))
        for c in across_steps + across_runs
    ]


def convergence_diagnostics(
    workdirs: Sequence[str | os.PathLike],
    *,
    members: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    stages: Sequence[str] = STAGES,
    settings: Settings = Settings(),
    out: str | os.PathLike | None = None,
    data_path: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> reports.Report:
    """Every diagnostic in `stages` of the runs in `workdirs`, written to `out`
    (default FIRST_WORKDIR/analysis)."""
    subjects = load_subjects(workdirs, members, steps, data_path)
    found = diagnose(subjects, stages, settings, progress)
    folder = analysis.output_dir(workdirs[0], out)
    return write(found, folder)
