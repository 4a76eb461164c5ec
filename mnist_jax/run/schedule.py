"""When a run evaluates and when it saves: the ends of its compiled chunks, and the
trip counts of the training loops it compiles to run them."""

from __future__ import annotations

import math

# A training loop's trip count is static, so each trip count is a compilation. A chunk
# may instead run as several calls of one shorter loop (cheap, none waiting for the
# device): up to this many calls per chunk.
MAX_CALLS_PER_CHUNK = 100


def period_ends(num_steps: int, num_periods: int) -> list[int]:
    """Steps after which each period's evaluation happens; the last is `num_steps`."""
    return sorted(
        {round(num_steps * (p + 1) / num_periods) for p in range(num_periods)}
    )


def save_steps(config, *, each_period: bool = True) -> list[int]:
    """Steps at which a run saves: the kept steps it reaches, every
    `checkpoint.every_steps` (0: each period end, or with `each_period=False` none),
    and always the final step. A sweep's members pass `each_period=False`: many
    members' saves would cost more than retraining a period after a crash."""
    num_steps = config.train.num_steps
    every = config.checkpoint.every_steps
    rolling = range(every, num_steps + 1, every) if every else ()
    if not every and each_period:
        rolling = period_ends(num_steps, config.train.num_periods)
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


def loop_lengths(config, done: int = 0) -> list[int]:
    """The trip counts of the training loops a run compiles, in the order it first
    needs them: the greatest common divisor of its chunk lengths, where no chunk is
    then over `MAX_CALLS_PER_CHUNK` calls (configs/mlp.py: chunks of 10, 90 and 100
    steps, one loop of 10), else each chunk length."""
    lengths = chunk_lengths(config, done)
    unit = math.gcd(*lengths)
    if lengths and max(lengths) <= unit * MAX_CALLS_PER_CHUNK:
        return [unit]
    return lengths


def calls(num_steps: int, compiled: list[int]) -> list[int]:
    """The loop calls, each a trip count, that run a chunk of `num_steps`: one of the
    `compiled` lengths repeated, or `num_steps` itself (compiled when first needed, e.g.
    by a run resumed off its schedule)."""
    for length in sorted(compiled, reverse=True):
        repeats, rest = divmod(num_steps, length)
        if not rest and repeats <= MAX_CALLS_PER_CHUNK:
            return [length] * repeats
    return [num_steps]
