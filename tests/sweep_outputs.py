"""What two runs of one sweep must share, bitwise, to be the same sweep: its tables
and histories, and each member's results (less timing), metrics and parameters at
every kept step. Used by test_sweep_resume.py and test_sweep_processes.py."""

import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from mnist_jax.core import programs
from mnist_jax.run import checkpoints, identity
from mnist_jax.sweep import members as sweep_members

TIMING_KEYS = ("train_seconds",)  # written per run, not part of what it computed


def outputs(workdir: Path, num_members: int, kept_steps: list[int]) -> dict:
    files = {
        name: (workdir / name).read_bytes()
        for name in ("sweep.csv", "sweep.md", "sweep_histories.json")
    }
    reads = checkpoints.BlockReads()  # each block's step read once, for all members
    for i in range(num_members):
        member = sweep_members.folder(workdir, i)
        results = json.loads((member / "results.json").read_text())
        for key in TIMING_KEYS:
            results.pop(key)
        files[f"{i}/results"] = results
        files[f"{i}/metrics"] = (member / "metrics.jsonl").read_bytes()
        assert checkpoints.available_steps(member) == kept_steps, member
        config = identity.read_config(member)
        _, abstract = nnx.split(programs.abstract_model(config))
        with checkpoints.Checkpointer(
            member, read_only=True, block_reads=reads
        ) as checkpointer:
            for step in kept_steps:
                params = checkpointer.restore_params(step, abstract)
                leaves = [np.asarray(x).tobytes() for x in jax.tree.leaves(params)]
                files[f"{i}/params@{step}"] = leaves
    return files
