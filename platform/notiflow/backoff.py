"""Full-jitter exponential backoff: a pure function, so that its bounds are trivially testable."""

from __future__ import annotations

import random


def backoff_ceiling_ms(attempt: int, *, base_ms: int, cap_ms: int) -> int:
    """The upper bound of the delay before retry number ``attempt`` (0-based): min(cap, base * 2**attempt)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # Cap the exponent so that huge attempt numbers never build huge integers.
    return min(cap_ms, base_ms * (1 << min(attempt, 62)))


def compute_backoff_ms(
    attempt: int,
    *,
    base_ms: int,
    cap_ms: int,
    retry_after_ms: int | None = None,
    rng: random.Random | None = None,
) -> int:
    """Delay before retry number ``attempt``: ``uniform(0, min(cap, base * 2**attempt))``.

    A downstream's ``Retry-After`` is a floor, but never beyond the cap: a misbehaving server cannot park a
    delivery for a day.
    """
    ceiling = backoff_ceiling_ms(attempt, base_ms=base_ms, cap_ms=cap_ms)
    delay = int((rng or random).uniform(0, ceiling))
    if retry_after_ms is not None and retry_after_ms > delay:
        delay = min(cap_ms, retry_after_ms)
    return delay
