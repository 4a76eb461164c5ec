"""Hyper-parameter sweeps: `grid` (axes, members, groups), `groups` (a group's members
trained together in blocks), `members` (each member's folder and block checkpoints),
`report` (sweep.md/csv/png), `sizing` (members per device) and `runner.run_sweep`.
`python -m mnist_jax.sweep` is `__main__.py`."""
