"""`experiments/benchmark.py` runs, end to end, and writes every row it promises: a
small run (20 steps, one repeat, a 4-member sweep) of the real command on the
notebook's files. Its timings are not checked, only that they are there and sane.

About a minute of both cores, so it carries the `benchmark` marker: `.ci/run` runs it
after the suite (`pytest -m benchmark`)."""

import json
import math

import pytest

from tests import processes

pytestmark = pytest.mark.benchmark


def test_a_small_benchmark_writes_every_row(mnist_dir, tmp_path):
    result = processes.run(
        processes.REPO / "experiments" / "benchmark.py",
        f"--data_dir={mnist_dir}",
        f"--out={tmp_path}",
        "--steps=20",
        "--repeats=1",
        "--sweeps=4",
        "--diagnosed_members=2",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["model"]["steps"] == 20
    assert sorted(report["sweeps"]) == ["1", "4"]
    for members, timed in report["sweeps"].items():
        assert timed["model_steps_per_second"] > 0, members
        assert math.isclose(
            timed["model_steps_per_second"], int(members) * 20 / timed["seconds"]
        )
    runs = report["processes"]
    assert runs["mlp_run"]["wall_seconds"] > 0 and runs["sweep_4"]["wall_seconds"] > 0
    assert len(runs["mlp_run_warm_cache_seconds_each"]) == 1
    assert runs["sweep_4_over_single"] == pytest.approx(
        runs["sweep_4"]["wall_seconds"] / runs["mlp_run"]["wall_seconds"]
    )
    saves = report["sweep_4_checkpoints"]
    assert len(saves["with_seconds"]) == len(saves["without_seconds"]) == 1
    rows = [
        line.split("|")[1].strip()
        for line in (tmp_path / "benchmark.md").read_text().splitlines()
        if line.startswith("| ")
        and line.split("|")[1].strip() not in ("measure", "---")
    ]
    assert rows == [
        "fused training, us/step",
        "plain jitted loop, us/step",
        "plain / fused",
        "fused training, first call (compile) s",
        "float32 matmul GFLOP/s (2048x2048)",
        "sweep 1 members: model-steps/s",
        "sweep 4 members: model-steps/s",
        "sweep 1 members: share of matmul peak",
        "sweep 4 members: share of matmul peak",
        "sweep 1 members: us per step of all, first call (compile) s",
        "sweep 4 members: us per step of all, first call (compile) s",
        "configs/mlp.py process wall s (median of 1)",
        "configs/mlp.py process wall s, fastest / slowest",
        "configs/mlp.py peak RSS MB",
        "configs/mlp.py repeated, warm compilation cache, wall s (median of 1)",
        "configs/mlp.py repeated (warm cache) / cold",
        "4-member sweep process wall s",
        "4-member sweep / single run",
        "4-member sweep, s with / without member checkpoints",
        "4-member sweep: share of wall time saving checkpoints",
        "diagnostics, one configs/mlp.py run (all, its kept checkpoints): process wall s",
        "diagnostics, one configs/mlp.py run (all, its kept checkpoints): s per stage",
        "diagnostics, 2 configs/sweep_mlp.py members (sharpness, per-digit): process wall s",
        "diagnostics, 2 configs/sweep_mlp.py members (sharpness, per-digit): s per stage",
    ]
    diagnosed = report["diagnostics"]
    assert set(diagnosed["mlp_run"]["stage_seconds"]) == {
        "read",
        "per_class",
        "sharpness",
        "paths",
        "slice",
        "cka",
    }
    assert set(diagnosed["sweep_mlp"]["stage_seconds"]) == {
        "read",
        "per_class",
        "sharpness",
    }
