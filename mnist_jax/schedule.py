"""When a run evaluates and when it saves: the ends of its compiled chunks."""

from __future__ import annotations


def period_ends(num_steps: int, num_periods: int) -> list[int]:
    """Steps after which each period's evaluation happens; the last is `num_steps`."""
    return sorted(
        {round(num_steps * (p + 1) / num_periods) for p in range(num_periods)}
    )


def save_steps(config) -> list[int]:
    """Steps at which a run saves: the kept steps it reaches, every
    `checkpoint.every_steps` (0: each period end), and always the final step."""
    num_steps = config.train.num_steps
    every = config.checkpoint.every_steps
    rolling = (
        range(every, num_steps + 1, every)
        if every
        else period_ends(num_steps, config.train.num_periods)
    )
    kept = (s for s in config.checkpoint.steps if s <= num_steps)
    return sorted({*rolling, *kept, num_steps})
