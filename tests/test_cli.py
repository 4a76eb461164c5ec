"""The command lines' edges: config variants, a missing --config, an interruption's
message, the quick exit."""

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mnist_jax.errors import ConfigError
from tests.conftest import REPO, run_module

CONFIGS = ("default", "linear", "mlp", "sweep_linear", "sweep_mlp")


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_refuses_an_unknown_variant(name):
    get_config = importlib.import_module(f"configs.{name}").get_config
    assert get_config("smoke").train.num_steps < get_config().train.num_steps
    assert get_config(None).to_dict() == get_config().to_dict()
    with pytest.raises(
        ConfigError, match=r"^unknown config variant 'smokee'; known: smoke$"
    ):
        get_config("smokee")


@pytest.mark.parametrize("module", ["mnist_jax.main", "mnist_jax.sweep"])
def test_unknown_variant_on_the_command_line(module, tmp_path):
    result = run_module(
        module, "--config=configs/mlp.py:smokee", f"--workdir={tmp_path / 'w'}"
    )
    assert _one_error_line(result) == (
        "error: --config=configs/mlp.py:smokee: "
        "unknown config variant 'smokee'; known: smoke"
    )
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("module", ["mnist_jax.main", "mnist_jax.sweep"])
@pytest.mark.parametrize("overrides", [(), ("--config.data.path=foo",)])
def test_missing_config_is_named(module, overrides, tmp_path):
    result = run_module(module, f"--workdir={tmp_path}", *overrides)
    assert _one_error_line(result).startswith("error: --config is missing (")


def test_interruption_is_printed_once_and_logged(tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_jax.main",
            "--config=configs/mlp.py:smoke",
            f"--workdir={tmp_path}",
            "--config.train.num_steps=5000",
            "--config.train.num_periods=500",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.stat().st_size:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.count("interrupted by SIGINT") == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted by SIGINT at step ")
    logged = (tmp_path / "train.log").read_text().strip().splitlines()[-1]
    assert last.removeprefix("error: ") in logged and "WARNING" in logged


def test_quick_exit_waits_for_non_daemon_threads(tmp_path):
    done = tmp_path / "written.txt"
    (tmp_path / "late_writer.py").write_text(
        textwrap.dedent(
            f"""
            import threading
            import time
            from concurrent.futures import ThreadPoolExecutor

            from mnist_jax import cli

            def write():
                time.sleep(0.5)
                with open({str(done)!r}, "w") as f:
                    f.write("done")

            def main(argv):
                threading.Thread(target=write).start()
                # An idle pool worker: joining it without the pool's shutdown hangs.
                ThreadPoolExecutor(1).submit(int).result()

            cli.run(main)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = run_module("late_writer", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert done.read_text() == "done"
