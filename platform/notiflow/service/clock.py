"""Time for decisions that PostgreSQL checks too: one clock, PostgreSQL's (issue 24, window 4).

A due time written by a worker is compared with PostgreSQL's ``now()`` (the load's "not due yet" check, the
stale sweep) and with the retry worker's idea of now (the retry schedule); an expiry time fixed by
PostgreSQL is compared with a stream worker's. With each machine's own clock, a worker whose clock ran
ahead by more than the check's 1 s of slack had its retries found "not due yet" and dropped (they came back
only through the stale sweep, STUCK_AFTER_S later), and one ahead by D expired notifications D early.

So workers read time from ``RecordClock``: their local clock plus its offset to PostgreSQL's, measured every
SYNC_S from the shortest of a few round trips (its error is at most half that round trip). A local clock
that steps is followed at the next measurement; the checks' 1 s of slack covers the rest. ``Clock`` is the
port: the local clock is passed in (the system's by default, a skewed one in tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Protocol

from notiflow.errors import StoreUnavailable
from notiflow.lifecycle import pause
from notiflow.service.ports import Record
from notiflow.store import deliveries as sql
from notiflow.store.pool import pg_errors

log = logging.getLogger(__name__)

#: How often a worker measures its clock's offset to PostgreSQL's, seconds: one trivial query per worker.
SYNC_S = 10.0
#: Round trips per measurement; the shortest one's midpoint is used.
SAMPLES = 3


class Clock(Protocol):
    """Wall-clock time, milliseconds since the Unix epoch."""

    def now_ms(self) -> int: ...


class SystemClock:
    """This machine's wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class RecordClock:
    """PostgreSQL's clock, read through a local one and the offset measured at the last ``sync``."""

    def __init__(self, pool: Record, local: Clock, interval_s: float = SYNC_S) -> None:
        self._pool = pool
        self._local = local
        self._interval_s = interval_s
        self.offset_ms = 0  # PostgreSQL's time minus the local clock's, at the last measurement
        self.synced = False

    def now_ms(self) -> int:
        return self._local.now_ms() + self.offset_ms

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.now_ms() / 1000, UTC)

    async def sync(self) -> None:
        """Measure the offset (the best of SAMPLES round trips); raises StoreUnavailable when PostgreSQL cannot
        be asked. The offset is the smallest one the measurement allows: PostgreSQL's time lies within half
        the round trip of its midpoint, so a clock that agrees within that is left as it is (on one machine,
        or with clocks in step, the local clock is used unchanged)."""
        best: tuple[int, int] | None = None  # (round trip, PostgreSQL's time minus the midpoint), ms
        async with pg_errors("clock"), self._pool.acquire() as conn:
            for _ in range(SAMPLES):
                before = self._local.now_ms()
                server = await sql.server_time_ms(conn)
                after = self._local.now_ms()
                sample = (after - before, server - (before + after) // 2)
                best = sample if best is None or sample[0] < best[0] else best
        assert best is not None
        rtt, estimate = best
        slack = rtt // 2 + 1
        if abs(estimate) <= slack:
            self.offset_ms = 0
        else:
            self.offset_ms = estimate - slack if estimate > 0 else estimate + slack
        self.synced = True

    async def try_sync(self) -> None:
        """``sync``, or a warning (the last offset stands) when PostgreSQL is away."""
        try:
            await self.sync()
        except StoreUnavailable as exc:
            log.warning("clock sync failed; the last offset stands",
                        extra={"error": str(exc), "offset_ms": self.offset_ms})

    async def run(self, stop: asyncio.Event) -> None:
        """Measure again every interval until ``stop``."""
        while not stop.is_set():
            await self.try_sync()
            await pause(stop, self._interval_s)
