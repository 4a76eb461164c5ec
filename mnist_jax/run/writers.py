"""Where a run's numbers go: `metrics.jsonl` for scripts, TensorBoard events for eyes.

The interface follows clu's `MetricWriter` (`write_scalars`, `write_hparams`, `flush`,
`close`) without clu, which imports TensorFlow; tensorboardX writes the events.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mnist_jax.errors import UserError

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the file parseable by any reader
    return value


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes atomically: a reader sees the old file or the new one, never half. The
    temporary name is the process's own, so processes writing one file never collide."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n")


def read_json(path: str | os.PathLike, expected: type = dict) -> Any:
    """A JSON file the project wrote, read back: a file that is not JSON, or whose top
    level is not `expected`, is a one-line `UserError` naming it (it was edited, cut
    short or replaced), never a traceback."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, expected):
        raise UserError(
            f"{path}: expected a JSON {_JSON_NAMES[expected]}, found "
            f"{type(value).__name__}"
        )
    return value


_JSON_NAMES = {dict: "object", list: "array"}


RESULT_TYPES = {"num_steps": int, "train_seconds": float, "warnings": list}


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """A results.json, checked: `RESULT_TYPES`' fields of their types, the primary
    metric on validation and test, and every metric it holds a number. A metric
    registered since the run was written reads as NaN (not measured)."""
    from mnist_jax.core import metrics

    results = read_json(path)
    for key in (f"val/{metrics.PRIMARY}", f"test/{metrics.PRIMARY}"):
        if key not in results:
            raise UserError(f"{path}: {key!r} is missing")
    for key, kind in RESULT_TYPES.items():
        value = results.get(key)
        typed = isinstance(value, kind) and not isinstance(value, bool)
        if not (typed or (kind is float and _is_number(value))):
            raise UserError(f"{path}: {key!r} is missing or not {kind.__name__}")
    for key, value in results.items():
        if key.startswith(("val/", "test/")) and not _is_number(value):
            raise UserError(f"{path}: {key}={value!r} is not a number")
    return {k: math.nan for k in metrics.keys("val", "test")} | results


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """metrics.jsonl's rows, each checked: a JSON object with an integer `step` and
    numbers (a NaN or inf written as a string)."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}, line {number}: not valid JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise UserError(f"{path}, line {number}: not a row with an integer step")
        for name, value in row.items():
            if not _is_number(value):
                raise UserError(
                    f"{path}, line {number}: {name}={value!r} is not a number"
                )
        rows.append(row)
    return rows


def _is_number(value: Any) -> bool:
    if isinstance(value, str):  # `_plain`'s spelling of NaN and inf
        return value in ("nan", "inf", "-inf")
    return isinstance(value, int | float) and not isinstance(value, bool)


def rewrite_metrics(workdir: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Replaces `metrics.jsonl` with `rows`, atomically. A resumed run starts from its
    checkpoint's history, so no period appears twice and none is lost."""
    lines = (json.dumps(row, sort_keys=True) + "\n" for row in rows)
    write_text(Path(workdir) / METRICS_FILE, "".join(lines))


def write_events(
    workdir: str | os.PathLike,
    rows: list[dict[str, Any]],
    hparams: Mapping[str, Any],
    scores: Mapping[str, float],
) -> None:
    """A finished run's TensorBoard events in one pass: each row's scalars at its
    step, and the hparams session (`hparams` and final `scores`) by which
    `tensorboard --logdir=SWEEP` compares the members of a sweep (TensorBoard's
    hparams take numbers, strings and bools: other values, e.g. tuples of hidden
    units, are written as strings). Written on this thread: tensorboardX's
    `SummaryWriter` starts a thread and a queue per file, CPU time per member taken
    from the cores the sweep trains on."""
    from tensorboardX import summary
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event

    events = EventsWriter(os.path.join(workdir, "events"))

    def write(proto, step: int) -> None:
        events.write_event(Event(wall_time=time.time(), step=step, summary=proto))

    for row in rows:
        for name, value in row.items():
            if name != "step":
                write(summary.scalar(name, float(value)), int(row["step"]))
    plain = {
        k: v if isinstance(v, int | float | str | bool) else str(v)
        for k, v in hparams.items()
    }
    for proto in summary.hparams(plain, dict(scores)):
        write(proto, 0)
    for name, value in scores.items():
        write(summary.scalar(name, float(value)), 0)
    events.close()


class MetricWriter:
    """Appends one JSON object per `write_scalars` call and mirrors it to TensorBoard."""

    def __init__(
        self, workdir: str | os.PathLike, tensorboard: bool = True, enabled: bool = True
    ):
        """`enabled=False` (processes other than 0 of a multi-host run) writes nothing."""
        self._enabled = enabled
        if not enabled:
            return
        # Held open for the run's life: one append per period, closed by close().
        self._jsonl = open(Path(workdir) / METRICS_FILE, "a")  # noqa: SIM115
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(workdir), flush_secs=30)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self._enabled:
            return
        row = {"step": int(step)} | {k: _plain(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, float(value), int(step))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        if not self._enabled:
            return
        if self._tb is not None:
            self._tb.add_text(
                "hparams", json.dumps(dict(hparams), indent=2, default=str)
            )

    def flush(self) -> None:
        if not self._enabled:
            return
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self._enabled:
            return
        self.flush()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_number(value: float, digits: int = 4) -> str:
    """A float for a table: `digits` decimals in the usual range (0.9516, 12.3000),
    `digits` significant figures outside it, so 3e-05 and 1e+30 read as themselves."""
    if math.isnan(value):
        return "n/a"
    if value == 0 or 10 ** -(digits - 1) <= abs(value) < 10**digits:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}g}"


def markdown_table(rows: list[dict], digits: int = 4) -> str:
    """A GitHub-flavoured markdown table of `rows` (dicts with the same keys)."""
    columns = list(rows[0])

    def cell(value):
        if isinstance(value, float):
            return format_number(value, digits)
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
