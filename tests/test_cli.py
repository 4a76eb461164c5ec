"""The command lines' edges: config variants, a missing --config, an interruption's
message, the quick exit, and configs loaded by path from outside the repository."""

import importlib
import os
import signal
import textwrap
import time

import pytest

from configs import mlp, sweep_mlp
from mnist_jax.config import files as config_files
from mnist_jax.errors import ConfigError
from tests import processes
from tests.processes import REPO

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
    result = processes.run(
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
    result = processes.run(module, f"--workdir={tmp_path}", *overrides)
    assert _one_error_line(result).startswith("error: --config is missing (")


def test_interruption_is_printed_once_and_logged(tmp_path):
    process = processes.start(
        "mnist_jax.main",
        "--config=configs/mlp.py:smoke",
        f"--workdir={tmp_path}",
        "--config.train.num_steps=5000",
        "--config.train.num_periods=500",
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.stat().st_size:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    result = processes.finish(process, timeout=120)
    stderr = result.stderr
    assert result.returncode == 130, stderr
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
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = processes.run("late_writer", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert done.read_text() == "done"


def test_load_config_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = config_files.load_config(f"{REPO}/configs/mlp.py:smoke")
    assert absolute.to_dict() == mlp.get_config("smoke").to_dict()
    # relative: the working directory's file first, else the repository's
    assert config_files.load_config("configs/sweep_mlp.py").to_dict() == (
        sweep_mlp.get_config().to_dict()
    )
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mlp.py").write_text(
        "import ml_collections\n\n\ndef get_config(arg=None):\n"
        "    return ml_collections.ConfigDict({'arg': arg})\n"
    )
    assert config_files.load_config("configs/mlp.py:x").to_dict() == {"arg": "x"}
    assert config_files.load_config("configs/mlp.py").to_dict() == {"arg": None}


def test_load_config_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^config file 'nope\.py:smoke' not found"):
        config_files.load_config("nope.py:smoke")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match=r"empty\.py defines no get_config"):
        config_files.load_config("empty.py")
    with pytest.raises(ConfigError, match="^unknown config variant 'big'"):
        config_files.load_config("configs/linear.py:big")


def test_readme_notebook_snippet_outside_the_repository(tmp_path):
    """As after `pip install -e .`: mnist_jax importable, `configs` not."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "mnist_jax").symlink_to(REPO / "mnist_jax")
    code = textwrap.dedent(
        """
        import importlib.util
        assert importlib.util.find_spec("configs") is None
        from mnist_jax.config.files import load_config
        config = load_config("configs/mlp.py:smoke")
        print(config.model.name, config.train.num_steps)
        """
    )
    script = tmp_path / "outside.py"
    script.write_text(code)
    result = processes.run(
        script, env={"PYTHONPATH": str(site)}, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mlp", "20"]


def test_a_config_file_from_before_the_layers_still_loads(tmp_path):
    """`from mnist_jax import config_schema` (researchers' own config files, an older
    sweep's best_config.py) resolves to the moved module, with a warning naming it."""
    old = tmp_path / "old.py"
    old.write_text(
        "from mnist_jax import config_schema, models\n\n\n"
        "def get_config(arg=None):\n"
        "    assert 'mlp' in models.MODELS.names()\n"
        "    return config_schema.smoke(config_schema.default_config())\n"
    )
    with pytest.warns(DeprecationWarning, match=r"mnist_jax.config.schema"):
        config = config_files.load_config(str(old))
    assert config.train.num_steps == 20
