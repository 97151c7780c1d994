"""Shutdown shared by the gateway and the workers: intake stops first, then in-flight work drains within
one grace period, then whatever is left is cancelled (a worker's stream entries stay unacknowledged and
are reclaimed by another consumer: cancellation never acknowledges).

One grace period for the whole drain, not one per resource: a process that closes five resources one
after another, each allowed the full grace, could take five times as long as its supervisor waits before
SIGKILL. ``Deadline`` hands each close what is left of the one period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

#: Seconds, after the grace period, for releasing the stores' connections. Nothing is drained then:
#: every statement has ended or been cancelled, so a connection still not given back is cut.
RELEASE_S = 1.0


class Deadline:
    """A point in event-loop time; ``left()`` is the time remaining until it, never negative."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._at = self._loop.time() + max(0.0, seconds)

    def left(self) -> float:
        return max(0.0, self._at - self._loop.time())


async def drain(tasks: Iterable[asyncio.Task[object]], grace_s: float) -> None:
    pending = {t for t in tasks if not t.done()}
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=grace_s)
    if still:
        log.warning("grace period over: cancelling in-flight work", extra={"tasks": len(still)})
        await cancel(still)


async def cancel(tasks: Iterable[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and give them RELEASE_S to end; returns those that did not. A task may absorb its
    cancellation (a client library inside a read may turn it into its own timeout and go on): it is left
    behind rather than waited for, since waiting on it is what held stops without bound."""
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    if not pending:
        return set()
    _, still = await asyncio.wait(pending, timeout=RELEASE_S)
    if still:
        log.warning("tasks did not end when cancelled", extra={"tasks": sorted(t.get_name() for t in still)})
    return still


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep that ends early when the process is asked to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
