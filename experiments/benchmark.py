"""Speed of training and sweeps, measured side by side in one run on the same data,
on whatever JAX runs on (CPU, GPU or TPU).

    python experiments/benchmark.py --data_dir=../shared/data/mnist --out=runs/benchmark

Writes `benchmark.json` and `benchmark.md`. Never part of the tests: timings belong to
one machine at one moment; compare the ratios, which this run measures together.
Measures, on the MLP of `configs/mlp.py` (batch 30):
- single-model training, microseconds per step: the fused path (`steps.Program`, one
  compiled loop) and a plain loop calling a jitted step from Python each step; and the
  fused program's first call (compilation and one run);
- sweeps: model-steps per second for 1, 16 (4 learning rates x 4 seeds), 64 (16 x 4)
  and, on a GPU or TPU or with `--sweep_1024`, 1024 (64 x 16) members, trained by the
  sweep's own programs and blocks (`mnist_jax.sweep.sizing`) with one JAX device per CPU
  core, as `python -m mnist_jax.sweep` does; each one's first call (compilation), the
  device's peak memory so far where the device reports it (`memory_stats()`), and the
  achieved model GFLOP/s (6 x batch x params per step) against the float32 matmul
  throughput measured here and now;
- whole processes: `python -m mnist_jax.main --config=configs/mlp.py` (JAX import
  included, every program compiled; the median of `--repeats` runs, taken before,
  between and after the sweeps), the same run repeated with a warm compilation cache,
  and `--sweeps` (16- and 64-member) sweeps (`--steps` steps, 10 periods), wall time
  and peak RSS, and the sweeps' wall time as a multiple of the single run's;
- what member checkpoints cost: the largest sweep trained in this process with and
  without them (`runner.run_sweep(..., save=False)`), alternating, and their share of
  its wall time;
- convergence diagnostics (`experiments/convergence_diagnostics.py`, whole processes):
  every diagnostic of one `configs/mlp.py` run (its kept checkpoints, defaults), and
  sharpness and per-digit accuracy of `--diagnosed_members` members of a
  `configs/sweep_mlp.py` sweep; wall time and each stage's seconds.

`--steps=20 --repeats=1 --sweeps=4 --diagnosed_members=2` checks in a minute that it all runs
(`tests/test_benchmark.py`); its numbers mean nothing.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from mnist_jax import cli, data
from mnist_jax.config import schema as config_schema
from mnist_jax.core import optim, programs
from mnist_jax.platform import devices, startup
from mnist_jax.platform import mesh as mesh_lib
from mnist_jax.run import loop, schedule, writers
from mnist_jax.sweep import grid, groups, runner

# JAX on a GPU takes 75% of its memory at start-up; this process and the runs it
# starts share the device, so each takes only what it uses.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_DATA_DIR = flags.DEFINE_string(
    "data_dir", "../shared/data/mnist", "Notebook data folder."
)
_OUT = flags.DEFINE_string("out", "runs/benchmark", "Output folder.")
_STEPS = flags.DEFINE_integer(
    "steps", 1000, "Training steps per measurement.", lower_bound=1
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Repeats; the median is reported.", lower_bound=1
)
_SWEEPS = flags.DEFINE_list(
    "sweeps",
    ["16", "64"],
    "Sweep sizes (members) timed as whole processes and in this process; the largest "
    "also with and without member checkpoints. A size of 16 or more is a grid of 4 "
    "seeds, a smaller one of one learning rate.",
)
flags.register_validator(
    "sweeps",
    lambda sizes: all(s.isdigit() and int(s) > 1 for s in sizes) and bool(sizes),
    "--sweeps must be member counts above 1, e.g. 16,64",
)
_SWEEP_1024 = flags.DEFINE_bool(
    "sweep_1024",
    None,
    "Also time a 1024-member sweep. Default: on a GPU or TPU only (on a CPU it takes "
    "minutes).",
)

_DIAGNOSED_MEMBERS = flags.DEFINE_integer(
    "diagnosed_members",
    45,
    "Members of a configs/sweep_mlp.py sweep (45 in all) whose sharpness and per-digit "
    "accuracy are timed.",
    lower_bound=1,
    upper_bound=45,
)

REPO = Path(__file__).resolve().parents[1]
# convergence_diagnostics.py's progress line as each stage ends
STAGE_LINE = re.compile(r"^(\w+): .* in ([0-9.]+) s$")


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_gflops(repeats: int, n: int = 2048) -> float:
    """The machine's float32 matmul throughput: the better of one device's matmul (XLA
    spreads it over the cores) and one matmul on every device at once."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    one = median_seconds(lambda: [matmul(a) for _ in range(10)][-1], repeats) / 10
    devices = jax.devices()
    stacked = jax.device_put(
        jnp.stack([a] * len(devices)),
        NamedSharding(Mesh(np.asarray(devices), ("d",)), PartitionSpec("d")),
    )
    matmuls = jax.jit(lambda x: jnp.einsum("bij,bjk->bik", x, x))
    jax.block_until_ready(matmuls(stacked))
    every = median_seconds(lambda: [matmuls(stacked) for _ in range(10)][-1], repeats)
    return 2 * n**3 * max(1 / one, len(devices) * 10 / every) / 1e9


def plain_loop_seconds(
    config, program, state, dataset, member, num_steps, repeats
) -> float:
    """The usual JAX loop: a jitted step per Python iteration, indices from the host."""
    tx = program.make_optimizer(config.optim.learning_rate, config.optim.clip_norm)

    @startup.jit
    def step(params, opt_state, rows):
        def loss(p):
            logits = program.logits(p, dataset.pool_x[rows])
            return optim.cross_entropy(logits, dataset.pool_y[rows], "sum")

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    train_idx = np.asarray(member.train_idx)
    rng = np.random.default_rng(0)
    batches = [
        rng.choice(train_idx, config.train.batch_size, replace=False)
        for _ in range(num_steps)
    ]
    jax.block_until_ready(step(state.params, state.opt_state, batches[0]))

    def run():
        params, opt_state = state.params, state.opt_state
        for rows in batches:
            params, opt_state = step(params, opt_state, rows)
        return params

    return median_seconds(run, repeats)


def sweep_grid(num_lrs: int, num_seeds: int) -> tuple[np.ndarray, range]:
    """The benchmark's sweep grids: learning rates 0.01..0.3 (log-spaced) x seeds."""
    return np.geomspace(0.01, 0.3, num_lrs), range(num_seeds)


def grid_shape(members: int) -> tuple[int, int]:
    """(learning rates, seeds) of a `members`-member grid: 16 -> 4 x 4, 64 -> 16 x 4,
    1024 -> 64 x 16; under 16 members, all seeds."""
    seeds = 16 if members >= 1024 else 4 if members >= 16 else members
    return members // seeds, seeds


def sweep_config(config, num_lrs: int, num_seeds: int) -> ConfigDict:
    """`config` with the `grid` as its sweep axes (seed, learning rate)."""
    learning_rates, seeds = sweep_grid(num_lrs, num_seeds)
    return config_schema.with_sweep(
        ConfigDict(config.to_dict()),
        {
            "seed": tuple(seeds),
            "optim.learning_rate": tuple(map(float, learning_rates)),
        },
    )


def peak_device_mb() -> float | None:
    """The most memory the first device has held so far, where it says (not a CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def sweep_seconds(
    config, host, num_lrs, num_seeds, num_steps, repeats
) -> tuple[float, float]:
    """Training time of a learning-rate x seed grid run as `mnist_jax.sweep` runs it:
    its programs, its blocks one after another, its members sharded over every device;
    and the first call's time (compilation and the measured steps). Evaluation is left out (the
    process timings below include it)."""
    grid_config = sweep_config(config, num_lrs, num_seeds)
    configs = [member for _, member in grid.expand(grid_config)]
    device_mesh = mesh_lib.make_sweep_mesh(())
    configs, blocks, size = groups.padded(configs, device_mesh)
    pool = data.to_device(host, mesh_lib.replicated(device_mesh)).without_test()
    programs = groups.group_programs(
        config, len(host.pool_labels), host.num_train, device_mesh
    )
    runs = [
        programs.init(*groups.member_arrays(configs[b * size : (b + 1) * size]))
        for b in range(blocks)
    ]

    def compiled(length):  # as run_group calls it
        return lambda *args: programs.train(args[0], length, *args[1:])

    # The sweep's calls: its static-length loop (10 steps for configs/mlp.py) repeated.
    trainers = [
        loop.Trainer(
            train=compiled,
            pool=pool,
            member=member,
            orders=loop.EpochOrders(programs.program, programs.order, member),
            lengths=schedule.loop_lengths(config),
        )
        for _, member in runs
    ]
    done = [0] * blocks

    def train(num):  # the state is donated, so each call continues from the last
        for b, trainer in enumerate(trainers):
            state, _ = trainer.run(runs[b][0], done[b], done[b] + num)
            runs[b], done[b] = (state, runs[b][1]), done[b] + num
        return [state for state, _ in runs]

    start = time.perf_counter()  # the first call of this length compiles it
    jax.block_until_ready(train(num_steps))
    first_call = time.perf_counter() - start
    return median_seconds(lambda: train(num_steps), repeats), first_call


def checkpoint_share(config, members: int, pairs: int) -> dict:
    """What member checkpoints cost a sweep: `runner.run_sweep` of the grid with and
    without them (`save=False`) in this process, after one unmeasured run (imports,
    first uses), `pairs` times each in alternating order; the share is
    1 - median(without) / median(with)."""
    grid_config = sweep_config(config, *grid_shape(members))
    seconds = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        runner.run_sweep(grid_config, f"{tmp}/warm-up")
        for i in range(pairs):
            for save in (True, False) if i % 2 else (False, True):
                start = time.perf_counter()
                runner.run_sweep(grid_config, f"{tmp}/{i}{save}", save=save)
                seconds[save].append(time.perf_counter() - start)
    with_s, without_s = np.median(seconds[True]), np.median(seconds[False])
    return {
        "with_seconds": seconds[True],
        "without_seconds": seconds[False],
        "share": float(1 - without_s / with_s),
    }


def process(args: list[str], stages: bool = False) -> dict:
    """Wall time and peak RSS of a fresh Python process (JAX import included).

    The peak RSS comes from `/usr/bin/time` where there is one: the kernel's count for
    a child forked straight from this large process would include this process's pages.
    """
    timer = shutil.which("time") or "/usr/bin/time"
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        prefix = [timer, "-f", "%M", "-o", rss.name] if os.path.exists(timer) else []
        start = time.perf_counter()
        child = subprocess.Popen(
            [*prefix, sys.executable, *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
        )
        stderr = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        if status:
            raise RuntimeError(stderr[-2000:])
        peak_kb = int(rss.read().split()[-1]) if prefix else usage.ru_maxrss
    timed = {"wall_seconds": wall, "peak_rss_mb": peak_kb / 1024}
    if stages:  # each stage's seconds, from its progress line
        lines = (STAGE_LINE.match(line) for line in stderr.splitlines())
        timed["stage_seconds"] = {m[1]: float(m[2]) for m in lines if m}
    return timed


def diagnostics_walls(num_steps: int, members: int) -> dict:
    """Whole processes of `experiments/convergence_diagnostics.py`: every diagnostic
    of one `configs/mlp.py` run, and sharpness and per-digit accuracy of `members`
    members of a `configs/sweep_mlp.py` sweep (each trained first, not timed)."""
    script = str(REPO / "experiments" / "convergence_diagnostics.py")
    data_flag = f"--config.data.path={_DATA_DIR.value}"
    steps_flag = f"--config.train.num_steps={num_steps}"
    with tempfile.TemporaryDirectory() as tmp:
        run, sweep = f"{tmp}/run", f"{tmp}/sweep"
        process(
            [
                "-m",
                "mnist_jax.main",
                "--config=configs/mlp.py",
                f"--workdir={run}",
                data_flag,
                steps_flag,
            ]
        )
        process(
            [
                "-m",
                "mnist_jax.sweep",
                "--config=configs/sweep_mlp.py",
                f"--workdir={sweep}",
                data_flag,
                steps_flag,
            ]
        )
        one_run = process([script, f"--workdir={run}", f"--out={tmp}/a"], stages=True)
        chosen = ",".join(map(str, range(members)))
        of_sweep = process(
            [
                script,
                f"--workdir={sweep}",
                f"--members={chosen}",
                "--diagnostics=sharpness,per_class",
                f"--out={tmp}/b",
            ],
            stages=True,
        )
    return {"mlp_run": one_run, "sweep_mlp_members": members, "sweep_mlp": of_sweep}


def sweep_args(workdir, members: int, num_steps: int) -> list[str]:
    learning_rates, seeds = sweep_grid(*grid_shape(members))
    lrs = ",".join(f"{x:.4f}" for x in learning_rates)
    seeds = ",".join(map(str, seeds))
    return [
        "-m",
        "mnist_jax.sweep",
        "--config=configs/sweep_mlp.py",
        f"--workdir={workdir}",
        f"--config.data.path={_DATA_DIR.value}",
        f"--config.sweep.optim.learning_rate=({lrs},)",
        "--config.sweep.train.batch_size=(30,)",
        f"--config.sweep.seed=({seeds},)",
        f"--config.train.num_steps={num_steps}",
        "--nocompilation_cache",  # cold, as the single runs it is divided by
    ]


def table_rows(report: dict, walls: list, warm: list, repeats: int) -> list[dict]:
    """benchmark.md's rows, from benchmark.json's `report`."""
    sweeps, single = report["sweeps"], report["processes"]["mlp_run"]
    processes = {
        int(k.split("_")[1]): v
        for k, v in report["processes"].items()
        if k.startswith("sweep_") and not k.endswith("_over_single")
    }
    largest = max(processes)
    saves = report[f"sweep_{largest}_checkpoints"]
    fused_compile_s = report["single"]["fused_first_call_seconds"]
    peak = report["matmul_gflops"]
    return [
        {
            "measure": "fused training, us/step",
            "value": report["single"]["fused_us_per_step"],
        },
        {
            "measure": "plain jitted loop, us/step",
            "value": report["single"]["plain_loop_us_per_step"],
        },
        {"measure": "plain / fused", "value": report["single"]["plain_over_fused"]},
        {
            "measure": "fused training, first call (compile) s",
            "value": fused_compile_s,
        },
        {"measure": "float32 matmul GFLOP/s (2048x2048)", "value": peak},
        *(
            {
                "measure": f"sweep {m} members: model-steps/s",
                "value": s["model_steps_per_second"],
            }
            for m, s in sweeps.items()
        ),
        *(
            {
                "measure": f"sweep {m} members: share of matmul peak",
                "value": s["share_of_matmul_peak"],
            }
            for m, s in sweeps.items()
        ),
        *(
            {
                "measure": f"sweep {m} members: us per step of all, first call (compile) s",
                "value": f"{s['us_per_step']:.1f}, {s['first_call_seconds']:.2f}",
            }
            for m, s in sweeps.items()
        ),
        *(
            {
                "measure": f"sweep {m} members: peak device memory MB",
                "value": s["peak_device_mb"],
            }
            for m, s in sweeps.items()
            if s["peak_device_mb"] is not None
        ),
        {
            "measure": f"configs/mlp.py process wall s (median of {repeats})",
            "value": single["wall_seconds"],
        },
        {
            "measure": "configs/mlp.py process wall s, fastest / slowest",
            "value": f"{walls[0]:.2f} / {walls[-1]:.2f}",
        },
        {"measure": "configs/mlp.py peak RSS MB", "value": single["peak_rss_mb"]},
        {
            "measure": f"configs/mlp.py repeated, warm compilation cache, wall s "
            f"(median of {repeats})",
            "value": float(np.median(warm)),
        },
        {
            "measure": "configs/mlp.py repeated (warm cache) / cold",
            "value": float(np.median(warm)) / single["wall_seconds"],
        },
        *(
            {
                "measure": f"{m}-member sweep process wall s",
                "value": run["wall_seconds"],
            }
            for m, run in processes.items()
        ),
        *(
            {
                "measure": f"{m}-member sweep / single run",
                "value": report["processes"][f"sweep_{m}_over_single"],
            }
            for m in processes
        ),
        {
            "measure": f"{largest}-member sweep, s with / without member checkpoints",
            "value": " / ".join(
                f"{np.median(saves[k]):.1f}"
                for k in ("with_seconds", "without_seconds")
            ),
        },
        {
            "measure": f"{largest}-member sweep: share of wall time saving checkpoints",
            "value": saves["share"],
        },
        *diagnostics_rows(report["diagnostics"]),
    ]


def diagnostics_rows(timed: dict) -> list[dict]:
    members = timed["sweep_mlp_members"]
    what = {
        "mlp_run": "diagnostics, one configs/mlp.py run (all, its kept checkpoints)",
        "sweep_mlp": f"diagnostics, {members} configs/sweep_mlp.py members "
        "(sharpness, per-digit)",
    }
    rows = []
    for key, label in what.items():
        stages = timed[key]["stage_seconds"]
        rows.append(
            {"measure": f"{label}: process wall s", "value": timed[key]["wall_seconds"]}
        )
        rows.append(
            {
                "measure": f"{label}: s per stage",
                "value": ", ".join(f"{k} {v:.1f}" for k, v in stages.items()),
            }
        )
    return rows


def process_walls(num_steps: int, sizes: list[int], repeats: int):
    """Whole processes: `configs/mlp.py` runs (cold, and repeated with a warm
    compilation cache) and each sweep size; (single, walls, warm, sweeps)."""
    with tempfile.TemporaryDirectory() as tmp:
        # The single run is short and the machine's speed drifts: its yardstick is the
        # median of `repeats` fresh processes (each in a new workdir) taken before,
        # between and after the sweeps, so a ratio compares like with like.
        # Cold starts, every program compiled, as before the compilation cache; the
        # cache's effect is measured apart, below.
        def single_run(i: int, cache: str = "--nocompilation_cache") -> dict:
            return process(
                [
                    "-m",
                    "mnist_jax.main",
                    "--config=configs/mlp.py",
                    f"--workdir={tmp}/single{i}",
                    f"--config.data.path={_DATA_DIR.value}",
                    f"--config.train.num_steps={num_steps}",
                    cache,
                ]
            )

        # Single runs before, between and after the sweeps.
        singles, processes = [single_run(0)], {}
        for m in sizes:
            processes[m] = process(sweep_args(f"{tmp}/s{m}", m, num_steps))
            if len(singles) < repeats:
                singles.append(single_run(len(singles)))
        singles += [single_run(i) for i in range(len(singles), repeats)]
        walls = sorted(run["wall_seconds"] for run in singles)
        # A repeated run with the compilation cache on (its default): the first fills
        # the cache, the next `repeats` load every program from it.
        warm_cache = f"--compilation_cache_dir={tmp}/xla"
        warm = [
            single_run(100 + i, warm_cache)["wall_seconds"] for i in range(repeats + 1)
        ][1:]
        single = {
            "wall_seconds": float(np.median(walls)),
            "wall_seconds_each": [run["wall_seconds"] for run in singles],
            "peak_rss_mb": max(run["peak_rss_mb"] for run in singles),
        }
    return single, walls, warm, processes


def main(argv) -> None:
    devices.use_cpu_cores()  # as `python -m mnist_jax.sweep` does; single runs use one
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    num_steps, repeats = _STEPS.value, _REPEATS.value
    config = config_schema.default_config()  # configs/mlp.py
    config.data.path = _DATA_DIR.value
    config.train.num_steps = num_steps
    sizes = sorted({int(m) for m in _SWEEPS.value})
    host = data.load(config.data)
    dataset = data.to_device(host)
    program, state, member = programs.init_run(config, host)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    flops_per_step = 6 * config.train.batch_size * num_params

    fused = startup.jit(program.train_steps, static_argnums=1)
    orders = loop.orders_for(program, member, 0, num_steps)
    start = time.perf_counter()
    jax.block_until_ready(fused(state, num_steps, dataset, member, orders))  # compiles
    fused_compile_s = time.perf_counter() - start
    fused_s = median_seconds(
        lambda: fused(state, num_steps, dataset, member, orders), repeats
    )
    plain_s = plain_loop_seconds(
        config, program, state, dataset, member, num_steps, repeats
    )
    peak = matmul_gflops(repeats)
    sweep_1024 = _SWEEP_1024.value
    if sweep_1024 is None:
        sweep_1024 = jax.default_backend() != "cpu"
    sweeps = {}
    for m in sorted({1, *sizes, *((1024,) if sweep_1024 else ())}):
        seconds, first_call = sweep_seconds(
            config, host, *grid_shape(m), num_steps, repeats
        )
        gflops = flops_per_step * m * num_steps / seconds / 1e9
        sweeps[m] = {
            "seconds": seconds,
            "model_steps_per_second": m * num_steps / seconds,
            "us_per_step": seconds / num_steps * 1e6,
            "first_call_seconds": first_call,
            "peak_device_mb": peak_device_mb(),
            "gflops": gflops,
            "share_of_matmul_peak": gflops / peak,
        }

    single, walls, warm, processes = process_walls(num_steps, sizes, repeats)

    # The 64-member sweep's member checkpoints (one Orbax save per block of members and
    # kept step, 12 here): their share of its wall time, trained in this process with
    # and without them.
    largest = sizes[-1]
    saves = checkpoint_share(config, largest, pairs=repeats)
    diagnosed = diagnostics_walls(num_steps, _DIAGNOSED_MEMBERS.value)

    report = {
        "machine": {
            "platform": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind,
            "devices": [str(d) for d in jax.devices()],
            "cpu": platform.processor() or platform.machine(),
            "jax": jax.__version__,
        },
        "model": {
            "params": num_params,
            "batch_size": config.train.batch_size,
            "flops_per_step": flops_per_step,
            "steps": num_steps,
        },
        "single": {
            "fused_us_per_step": fused_s / num_steps * 1e6,
            "plain_loop_us_per_step": plain_s / num_steps * 1e6,
            "plain_over_fused": plain_s / fused_s,
            "fused_gflops": flops_per_step * num_steps / fused_s / 1e9,
            "fused_first_call_seconds": fused_compile_s,
        },
        "matmul_gflops": peak,
        "sweeps": sweeps,
        "processes": {
            "mlp_run": single,
            "mlp_run_warm_cache_seconds_each": warm,
            **{f"sweep_{m}": run for m, run in processes.items()},
            **{
                f"sweep_{m}_over_single": run["wall_seconds"] / single["wall_seconds"]
                for m, run in processes.items()
            },
        },
        f"sweep_{largest}_checkpoints": saves,
        "diagnostics": diagnosed,
    }
    writers.write_json(out / "benchmark.json", report)
    rows = table_rows(report, walls, warm, repeats)
    table = writers.markdown_table(rows, digits=3)
    header = f"Machine: {report['machine']['cpu']}, {report['machine']['devices']}, jax {jax.__version__}\n\n"
    (out / "benchmark.md").write_text(header + table)
    print(header + table, end="")
    print(json.dumps(report["processes"], indent=1))


if __name__ == "__main__":
    cli.run(main)
