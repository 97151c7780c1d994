"""The socket channel's hand-offs (dispatched, offline), recorded off the critical path.

Only the acceptance must be durable before anything else happens; a hand-off to a gateway is
information, not a guarantee (SPEC §4: the offline queue lists every unacknowledged delivery, whatever
its state). So the stream worker acknowledges its entries as soon as the frames are published, and the
hand-offs are written here, coalesced, a little later: one UPDATE for many batches, and none at all for
the deliveries the client acknowledged meanwhile (the UPDATE only moves pending/retrying rows).

Losing these writes (a crash, PostgreSQL away) loses nothing either: the rows stay pending, and the
reconciler's stuck-work sweep puts them back on the stream after ``stuck_after_s`` (a redelivery, never a
loss). Failures, retries and expiries are not written here: they are recorded before the entry's ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque

from notiflow.errors import StoreUnavailable
from notiflow.lifecycle import cancel
from notiflow.service.ports import Record
from notiflow.store import deliveries as sql
from notiflow.store.pool import pg_errors, retry_conflicts

log = logging.getLogger(__name__)

# Hand-offs per UPDATE statement. Small: one statement locks its rows and writes its WAL at once, and a
# burst's hand-offs come due together (DISPATCH_RECORD_DELAY_MS after it); at 5,000 a statement held up the
# commits after it (side_by_side's paced 1,000/s unicast phase right after the blast: p99 124-135 ms, at 500:
# 26-31 ms).
WRITE_CHUNK = 500
HELD_MAX = 200_000  # hand-offs held while PostgreSQL is away; past it the stuck-work sweep covers them

Handoff = tuple[uuid.UUID, str, str]  # (notification id, user id, dispatched | offline)


class DispatchLog:
    """Hand-offs wait here until they are ``delay_s`` old, then are written in one statement per chunk.

    The age counts per batch of hand-offs, not per flush period: a batch added just before a periodic
    flush would otherwise be written at once, before its acknowledgement (typically tens of ms later)
    could make the write unnecessary.
    """

    def __init__(self, pool: Record, delay_s: float) -> None:
        self._pool = pool
        self._delay_s = delay_s
        self._held: deque[tuple[float, list[Handoff]]] = deque()  # (monotonic time added, hand-offs)
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    def add(self, handoffs: list[Handoff]) -> None:
        if not handoffs:
            return
        if self._count + len(handoffs) > HELD_MAX:
            self.dropped += len(handoffs)
            return
        self._held.append((time.monotonic(), handoffs))
        self._count += len(handoffs)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dispatch-log")

    async def close(self, grace_s: float) -> None:
        """Write what is held (within ``grace_s``), then stop."""
        if self._task is not None:
            await cancel([self._task])
            self._task = None
        with contextlib.suppress(TimeoutError, StoreUnavailable):
            await asyncio.wait_for(self.flush(), timeout=grace_s)

    async def _run(self) -> None:
        while True:
            # A quarter of the delay between rounds: a hand-off is written between 1 and 1.25 delays old.
            await asyncio.sleep(self._delay_s / 4)
            try:
                await self.flush(older_than_s=self._delay_s)
            except StoreUnavailable as exc:
                log.warning("hand-off record failed; kept for the next round", extra={"error": str(exc)})

    async def flush(self, older_than_s: float = 0.0) -> None:
        """Write the hand-offs held for at least ``older_than_s`` (all of them by default)."""
        cutoff = time.monotonic() - older_than_s
        due: list[Handoff] = []
        while self._held and self._held[0][0] <= cutoff:
            due.extend(self._held.popleft()[1])
        for start in range(0, len(due), WRITE_CHUNK):
            chunk = due[start:start + WRITE_CHUNK]

            async def write(chunk: list[Handoff] = chunk) -> None:
                async with pg_errors("record hand-offs"), self._pool.acquire() as conn:
                    await sql.record_handoffs(conn, chunk)

            try:
                await retry_conflicts(write)
            except (StoreUnavailable, asyncio.CancelledError):
                self._held.appendleft((cutoff, due[start:]))  # first in line for the next round (or close)
                raise
            self._count -= len(chunk)
            self.written += len(chunk)
