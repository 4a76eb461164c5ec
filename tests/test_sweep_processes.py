"""Sweeps at any scale: two real processes joined by jax.distributed on 127.0.0.1 train,
stop on a SIGTERM to either one, resume and refuse a held folder exactly as one process
does; and a sweep stopped on one layout (devices, members per device) resumes on
another, every member's kept steps still its own."""

import json
import signal
from pathlib import Path

import pytest

from mnist_jax.run import checkpoints
from mnist_jax.run import workdir as workdir_lib
from mnist_jax.sweep import members as sweep_members
from tests import processes, sweep_outputs
from tests.test_distributed import _free_port

HELPER = processes.REPO / "tests" / "preempt_helper.py"
# 8 members in 2 groups of 4 (batch 10: members 0, 2, 4, 6; batch 30: 1, 3, 5, 7),
# 20 steps, chunks ending (and saving) at 5, 10 and 20.
SWEEP = ["--config=configs/sweep_linear.py:smoke"]
NUM_MEMBERS, KEPT_STEPS = 8, [5, 10, 20]
SIGTERM_EXIT = 128 + signal.SIGTERM
TIMEOUT = 240  # seconds for any one command: a hang fails the test, never the suite


def _sweep(workdir, *args, when="0", cpu_devices=1, process=None, port=None):
    distributed = []
    if process is not None:
        distributed = [
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={process}",
        ]
    return processes.start(
        HELPER,
        "mnist_jax.sweep",
        when,
        *SWEEP,
        *args,
        f"--workdir={workdir}",
        f"--cpu_devices={cpu_devices}",
        *distributed,
    )


def _two_processes(workdir, *args, signal_process_1=None):
    """Both processes' (exit code, stderr); `signal_process_1` ('STEP@MEMBER') sends
    process 1 alone a SIGTERM there."""
    port = _free_port()
    started = [
        _sweep(workdir, *args, when=when, process=i, port=port)
        for i, when in enumerate(("0", signal_process_1 or "0"))
    ]
    outcomes = []
    for process in started:
        result = processes.finish(process, TIMEOUT)
        outcomes.append((result.returncode, result.stderr))
    return outcomes


def _one_process(workdir, *args, when="0", cpu_devices=1):
    result = processes.finish(
        _sweep(workdir, *args, when=when, cpu_devices=cpu_devices), TIMEOUT
    )
    return result.returncode, result.stderr


@pytest.fixture(scope="module")
def expected(uninterrupted):
    return outputs(uninterrupted)


def outputs(workdir: Path) -> dict:
    return sweep_outputs.outputs(workdir, NUM_MEMBERS, KEPT_STEPS)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    for code, err in _two_processes(workdir):
        assert code == 0, err[-3000:]
    return workdir


def test_a_two_process_sweep_trains_once_and_equals_one_process(
    uninterrupted, expected, tmp_path
):
    info = json.loads((uninterrupted / "run_info.json").read_text())
    assert info["process_count"] == 2
    assert info["mesh"]["axes"] == {"members": 2, "data": 1}
    log = (uninterrupted / "train.log").read_text()
    assert log.count("Group 2/2: 4 members") == 1  # process 0 alone writes it
    code, err = _one_process(tmp_path, cpu_devices=2)
    assert code == 0, err[-3000:]
    assert outputs(tmp_path) == expected


def test_sigterm_to_one_process_stops_both_at_one_chunk_and_resumes_exactly(
    expected, tmp_path
):
    outcomes = _two_processes(tmp_path, signal_process_1="10@1")
    line = processes.same_last_line(outcomes, SIGTERM_EXIT)
    assert line.startswith("error: interrupted by SIGTERM at step 10: member ")
    second = sweep_members.folder(tmp_path, 1)
    assert checkpoints.available_steps(second) == [5, 10]
    assert not (second / "results.json").exists()
    assert (sweep_members.folder(tmp_path, 0) / "results.json").is_file()

    for code, err in _two_processes(tmp_path):
        assert code == 0, err[-3000:]
    assert (
        "Resuming 4 members from their checkpoints at step 10."
        in (tmp_path / "train.log").read_text()
    )
    assert outputs(tmp_path) == expected


def test_a_held_sweep_folder_is_the_same_line_on_every_process(tmp_path):
    workdir_lib.prepare(tmp_path)
    with workdir_lib.lock(tmp_path):
        outcomes = _two_processes(tmp_path)
    line = processes.same_last_line(outcomes, 2)
    assert "is in use by process" in line
    assert not (tmp_path / "members").exists()


def test_a_sweep_resumes_on_any_layout_and_every_step_stays_readable(
    expected, tmp_path
):
    """2 devices, stopped in the first group; 1 device with one member per block (the
    first group's blocks read from the 2-device block), stopped in the second group's
    last block; 3 devices (blocks of 4 padded to 6, resumed from four 1-member
    blocks): every member's steps 5, 10, 20 restore, equal to an uninterrupted
    sweep's, whatever layout saved them."""
    code, err = _one_process(tmp_path, when="10@0", cpu_devices=2)
    assert code == SIGTERM_EXIT, err[-3000:]
    code, err = _one_process(
        tmp_path,
        "--config.sweep_block.members_per_device=1",
        when="10@7",
        cpu_devices=1,
    )
    assert code == SIGTERM_EXIT, err[-3000:]
    code, err = _one_process(tmp_path, cpu_devices=3)
    assert code == 0, err[-3000:]
    blocks = sorted(p.name for p in (tmp_path / sweep_members.BLOCKS_DIR).iterdir())
    assert blocks == [
        "m0-n1-s1",  # 1 device, one member per block
        "m0-n4-s4",  # 2 devices
        "m1-n1-s1",
        "m1-n4-s6",  # 3 devices: 4 members padded to 6
        "m2-n1-s1",
        "m3-n1-s1",
        "m4-n1-s1",
        "m5-n1-s1",
        "m6-n1-s1",
        "m7-n1-s1",
    ]
    log = (tmp_path / "train.log").read_text()
    assert "Resuming 1 members from their checkpoints at step 10." in log
    assert "Resuming 4 members from their checkpoints at step 10." in log
    assert outputs(tmp_path) == expected
