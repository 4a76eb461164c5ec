"""When a run evaluates and when it saves: the ends of its compiled chunks, and so the
chunk lengths it compiles a training program for."""

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


def chunk_ends(config, done: int = 0) -> list[int]:
    """The ends of the compiled chunks after step `done`: period ends and save steps."""
    num_steps = config.train.num_steps
    ends = {*period_ends(num_steps, config.train.num_periods), *save_steps(config)}
    return sorted(s for s in ends if s > done)


def chunk_lengths(config, done: int = 0) -> list[int]:
    """The distinct chunk lengths after step `done`, in the order the run first needs
    them: each is one compiled training program (its loop's trip count is static)."""
    lengths, previous = {}, done
    for end in chunk_ends(config, done):
        lengths.setdefault(end - previous)
        previous = end
    return list(lengths)
