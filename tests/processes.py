"""The one way tests start this repository's programs in a child process, as a user
does: from the repository root (or `cwd`), blocking with the output captured, or in the background.

A `str` target is a module (`python -m mnist_jax.main`), a `Path` a script
(`python experiments/confusion_matrix.py`), a `Code` source (`python -c`). `env` adds to (or, with None, removes from)
the test's own environment, which the child otherwise inherits as it is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Code(str):
    """A `target` that is Python source, run with `python -c`."""


def command(target: str | Path, *args: str) -> list[str]:
    """The argv that runs `target` with this interpreter."""
    if isinstance(target, Path):
        return [sys.executable, str(target), *args]
    if isinstance(target, Code):
        return [sys.executable, "-c", target, *args]
    return [sys.executable, "-m", target, *args]


def _environment(env: Mapping[str, str | None] | None) -> dict[str, str] | None:
    if not env:
        return None  # inherit os.environ as it is now (tests' monkeypatched values too)
    merged = {**os.environ, **env}
    return {name: value for name, value in merged.items() if value is not None}


def run(
    target: str | Path,
    *args: str,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 300,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess:
    """Runs `target` to the end; `returncode`, `stdout` and `stderr` (text) as it left
    them. A child still running after `timeout` seconds is killed and
    `subprocess.TimeoutExpired` raised."""
    return subprocess.run(
        command(target, *args),
        cwd=cwd,
        env=_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(
    target: str | Path,
    *args: str,
    env: Mapping[str, str | None] | None = None,
    cwd: Path = REPO,
) -> subprocess.Popen:
    """Starts `target` in the background, stdout and stderr piped (as text): signal it,
    poll it, and collect it with `finish`."""
    return subprocess.Popen(
        command(target, *args),
        cwd=cwd,
        env=_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(
    process: subprocess.Popen, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Waits for a `start`ed process and returns what `run` would have; one still
    running after `timeout` seconds is killed first (no orphan outlives the test)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def same_last_line(outcomes: list[tuple[int, str]], returncode: int) -> str:
    """The last stderr line every process of a multi-process command ended with, given
    each one's (exit code, stderr): each exited `returncode` with no traceback, and
    the line is the same on every process."""
    lines = []
    for code, err in outcomes:
        assert code == returncode, err[-3000:]
        assert "Traceback" not in err
        lines.append(err.strip().splitlines()[-1])
    assert len(set(lines)) == 1, lines  # the same line on every process
    return lines[0]
