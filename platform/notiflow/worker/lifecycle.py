"""Two-stage shutdown shared by the workers: intake stops first, then in-flight work drains within a
grace period, then whatever is left is cancelled (its stream entries stay unacknowledged and are
reclaimed by another consumer: cancellation never acknowledges)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def drain(tasks: Iterable[asyncio.Task[object]], grace_s: float) -> None:
    pending = {t for t in tasks if not t.done()}
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=grace_s)
    if still:
        log.warning("grace period over: cancelling in-flight work", extra={"tasks": len(still)})
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep that ends early when the process is asked to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
