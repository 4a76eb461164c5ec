"""A command line that, given a step, sends itself SIGTERM once it has trained to that
step: a preemption notice reaching one process of a multi-host run (or of a sweep on
one layout, to be resumed on another), at a known step. Used by test_interrupts.py and
test_sweep_processes.py.

    python tests/preempt_helper.py mnist_jax.main STEP[:SIGNAL] FLAGS...  (STEP 0: none)
    python tests/preempt_helper.py mnist_jax.sweep STEP@MEMBER[:SIGNAL] FLAGS...

A single run is signalled once STEP's period is logged; a sweep once the block whose
first member is MEMBER has recorded its chunk ending at STEP. SIGNAL: TERM (the
default) or INT, as Ctrl-C.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_jax.run import loop
from mnist_jax.sweep import members as sweep_members


def signal_single_run(step: int, signum: int) -> None:
    log_period = loop.log_period

    def log_then_signal(at, *args):
        log_period(at, *args)
        if at == step:
            os.kill(os.getpid(), signum)

    loop.log_period = log_then_signal


def signal_sweep(step: int, member: str, signum: int) -> None:
    record = sweep_members.MemberBlock.record

    def record_then_signal(self, end, *args):
        record(self, end, *args)
        if end == step and self.folders[0].name == member:
            os.kill(os.getpid(), signum)

    sweep_members.MemberBlock.record = record_then_signal


def main():
    module, when = sys.argv[1], sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    when, _, name = when.partition(":")
    signum = signal.Signals[f"SIG{name or 'TERM'}"]
    step, _, member = when.partition("@")
    if member:
        signal_sweep(int(step), member, signum)
    elif int(step):
        signal_single_run(int(step), signum)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
