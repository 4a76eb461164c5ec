"""A sweep stopped at any moment (SIGKILL, SIGINT) continues with the same command and
ends with the same files, bitwise, as one that was never stopped."""

import signal
import subprocess
from pathlib import Path

import pytest

from mnist_jax.run import checkpoints
from mnist_jax.sweep import members as sweep_members
from tests import processes, sweep_outputs

HELPER = Path(__file__).with_name("sweep_helper.py")
NUM_MEMBERS = 8


def run_helper(workdir: Path, mode: str) -> subprocess.CompletedProcess:
    return processes.run(HELPER, str(workdir), mode)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = run_helper(workdir, "none")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def expected(reference):
    return outputs(reference)


def outputs(workdir: Path) -> dict:
    return sweep_outputs.outputs(workdir, NUM_MEMBERS, [5, 10, 20])


@pytest.mark.parametrize(
    "mode, expected_log",
    [
        ("kill_after_group", "Members 0, 2, 4, 6 finished earlier: read back."),
        ("kill_mid_group", "Resuming 4 members from their checkpoints at step 10."),
        # Killed with the save in flight: from step 10 if Orbax had finished it, else
        # from step 5; never from a half-written one.
        ("kill_in_save", "Resuming 4 members from their checkpoints at step"),
        ("kill_in_report", "Members 1, 3, 5, 7 finished earlier: read back."),
    ],
)
def test_killed_sweep_resumes_bitwise(expected, tmp_path, mode, expected_log):
    killed = run_helper(tmp_path, mode)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "sweep.png").exists()
    resumed = run_helper(tmp_path, "none")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert expected_log in (tmp_path / "train.log").read_text()
    assert outputs(tmp_path) == expected


def test_sigint_saves_says_one_line_and_resumes_bitwise(expected, tmp_path):
    stopped = run_helper(tmp_path, "sigint_mid_group")
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    errors = [line for line in stopped.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "interrupted by SIGINT at step 10" in errors[0]
    assert "Traceback" not in stopped.stderr
    # The second group's members saved where they stopped; the first is finished.
    assert (sweep_members.folder(tmp_path, 0) / "results.json").is_file()
    assert not (sweep_members.folder(tmp_path, 7) / "results.json").exists()
    assert checkpoints.available_steps(sweep_members.folder(tmp_path, 7)) == [5, 10]
    resumed = run_helper(tmp_path, "none")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outputs(tmp_path) == expected
