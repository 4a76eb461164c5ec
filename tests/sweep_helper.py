"""Runs a small two-group sweep in a child process and, on request, stops it at a chosen
moment, the way a preempted or killed job is. Used by test_sweep_resume.py.

    python tests/sweep_helper.py WORKDIR MODE

MODE: none | kill_after_group (SIGKILL once the first group's members are written) |
kill_mid_group (SIGKILL after a second-group member's step-10 save) | kill_in_save
(SIGKILL while that save is still being written, Orbax's thread in flight) | kill_in_report
(SIGKILL while the report is being drawn, sweep.csv written) | sigint_mid_group
(SIGINT during its chunk to step 10: the sweep should finish the chunk, save at step 10
and exit 130).
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import sweep_mlp  # noqa: E402
from mnist_jax.errors import Interrupted  # noqa: E402
from mnist_jax.run import checkpoints
from mnist_jax.sweep import members as sweep_members
from mnist_jax.sweep import report as sweep_report
from mnist_jax.sweep import runner

# Members 0, 2, 4, 6 (batch 10) are the first group; 1, 3, 5, 7 (batch 30) the second.
LAST_OF_FIRST_GROUP, SECOND_GROUP_MEMBER = "6", "7"


def config():
    c = sweep_mlp.get_config("smoke")  # 8 members, 20 steps, saves at 5, 10, 20
    c.model.hidden_units = (32,)
    return c


def die(signum=signal.SIGKILL):
    os.kill(os.getpid(), signum)


def main():
    workdir, mode = sys.argv[1], sys.argv[2]
    if mode == "kill_after_group":
        finish = sweep_members.write_finish

        def finish_then_die(member_dir, *args):
            finish(member_dir, *args)
            if member_dir.name == LAST_OF_FIRST_GROUP:
                die()

        sweep_members.write_finish = finish_then_die
    if mode == "sigint_mid_group":
        record = sweep_members.MemberBlock.record

        def record_then_interrupt(self, end, *args):
            record(self, end, *args)
            if end == 10 and self.folders[-1].name == SECOND_GROUP_MEMBER:
                die(signal.SIGINT)  # as Ctrl-C while the chunk to step 10 runs

        sweep_members.MemberBlock.record = record_then_interrupt
    if mode in ("kill_mid_group", "kill_in_save"):
        save = checkpoints.Checkpointer.save

        def save_then_stop(self, step, state, metadata):
            save(self, step, state, metadata)
            if SECOND_GROUP_MEMBER not in metadata.get("members", ()):  # its block's
                return
            if step == 10:
                if mode == "kill_mid_group":
                    self.wait_until_finished()
                die()

        checkpoints.Checkpointer.save = save_then_stop
    if mode == "kill_in_report":

        def plot_then_die(*args):
            die()

        sweep_report.plot_sweep = plot_then_die
    try:
        runner.run_sweep(config(), workdir)
    except Interrupted as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
