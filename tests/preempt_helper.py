"""`python -m mnist_jax.main` that, given a step, sends itself SIGTERM once that step's
period has been logged: a preemption notice reaching one process of a multi-host run,
at a known step. Used by test_interrupts.py.

    python tests/preempt_helper.py STEP MAIN_FLAGS...   (STEP 0: no signal)
"""

import os
import runpy
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_jax import loop  # noqa: E402


def main():
    step = int(sys.argv[1])
    sys.argv = ["mnist_jax.main", *sys.argv[2:]]
    if step:
        log_period = loop.log_period

        def log_then_signal(at, *args):
            log_period(at, *args)
            if at == step:
                os.kill(os.getpid(), signal.SIGTERM)

        loop.log_period = log_then_signal
    runpy.run_module("mnist_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
