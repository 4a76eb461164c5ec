"""Runs a small training in a child process and, on request, dies at a chosen moment,
the way a preempted or OOM-killed job does. Used by test_reliability.py.

    python tests/run_helper.py WORKDIR MODE STEP [NUM_STEPS]

MODE: none | kill_after_save (SIGKILL while an async checkpoint save is in flight) |
kill_mid_metrics (SIGKILL with half a metrics line written) | rss (print RSS per period).
"""

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import mlp  # noqa: E402
from mnist_jax.run import checkpoints, train, writers


def config(num_steps=200):
    c = mlp.get_config("smoke")
    c.train.num_steps = num_steps
    c.train.num_periods = 10
    c.model.dropout_rate = 0.1
    return c


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main():
    workdir, mode, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    num_steps = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    if mode == "kill_after_save":
        save = checkpoints.Checkpointer.save

        def save_then_die(self, at, *args, **kwargs):
            save(self, at, *args, **kwargs)
            if at == step:
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoints.Checkpointer.save = save_then_die
    if mode == "kill_mid_metrics":
        write = writers.MetricWriter.write_scalars

        def write_half_then_die(self, at, scalars):
            if at == step:
                line = json.dumps({"step": at, **scalars})
                self._jsonl.write(line[: len(line) // 2])
                self._jsonl.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            write(self, at, scalars)

        writers.MetricWriter.write_scalars = write_half_then_die
    if mode == "rss":
        write = writers.MetricWriter.write_scalars

        def write_and_measure(self, at, scalars):
            write(self, at, scalars)
            print(json.dumps({"step": at, "rss_mb": rss_mb()}), flush=True)

        writers.MetricWriter.write_scalars = write_and_measure
    c = config(num_steps)
    if mode == "rss":
        c.train.num_periods = 20
    train.train_and_evaluate(c, workdir)


if __name__ == "__main__":
    main()
