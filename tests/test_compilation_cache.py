"""The command lines keep compiled programs on disk by default, in the per-user cache
folder: a repeated run loads every program instead of compiling it again, and
run_info.json says where they were kept (None with --nocompilation_cache)."""

import json

from tests import processes

RUN = ["--config=configs/linear.py:smoke"]


def _entries(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_a_repeated_run_compiles_nothing_new(tmp_path):
    cache = tmp_path / "user_cache"
    # The suite points JAX at a shared cache; a user without one gets the default.
    env = {"JAX_COMPILATION_CACHE_DIR": None, "MNIST_JAX_CACHE": str(cache)}
    results = []
    for name in ("first", "again"):
        result = processes.run(
            "mnist_jax.main", *RUN, f"--workdir={tmp_path / name}", env=env
        )
        assert result.returncode == 0, result.stderr[-3000:]
        info = json.loads((tmp_path / name / "run_info.json").read_text())
        assert info["compilation_cache"] == str(cache / "xla")
        results.append(json.loads((tmp_path / name / "results.json").read_text()))
        if name == "first":
            written = _entries(cache / "xla")
    assert len(written) >= 4  # init, the training loop, order, evaluation, ...
    assert _entries(cache / "xla") == written  # every program loaded, none added
    for key in ("val/accuracy", "val/log_loss", "test/accuracy", "test/log_loss"):
        assert results[1][key] == results[0][key], key


def test_the_cache_can_be_turned_off(tmp_path):
    cache = tmp_path / "user_cache"
    env = {"JAX_COMPILATION_CACHE_DIR": None, "MNIST_JAX_CACHE": str(cache)}
    result = processes.run(
        "mnist_jax.main",
        *RUN,
        f"--workdir={tmp_path / 'run'}",
        "--nocompilation_cache",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["compilation_cache"] is None
    assert not (cache / "xla").exists()


def test_an_unwritable_cache_folder_compiles_and_says_so(tmp_path):
    result = processes.run(
        "mnist_jax.main",
        *RUN,
        f"--workdir={tmp_path / 'run'}",
        "--compilation_cache_dir=/proc/mnist_jax_xla",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compilation cache /proc/mnist_jax_xla cannot be written" in result.stderr
    assert "Error reading persistent compilation cache" not in result.stderr
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["compilation_cache"] is None
