"""The socket channel's hand-offs (dispatched, offline), recorded off the critical path.

Only the acceptance must be durable before anything else happens; a hand-off to a gateway is
information, not a guarantee (SPEC §4: the offline queue lists every unacknowledged delivery, whatever
its state). So the stream worker acknowledges its entries as soon as the frames are published, and the
hand-offs are written here, coalesced, a little later: one UPDATE for many batches.

Who records what: a gateway node records ``dispatched`` for the frames it pushed to a socket and
``offline`` for those of users it no longer held; the stream worker records ``offline`` for the deliveries
no node heard. A gateway sees its sockets' acknowledgements: a delivery acknowledged within the delay is
``settle``d and never written (before, the worker wrote every hand-off, and the UPDATE of a row acknowledged
meanwhile found nothing to move after looking it up, 6-7 µs of PostgreSQL's CPU per fan-out delivery).

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
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from itertools import repeat

from notiflow import metrics
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

#: A delivery: (user id, notification id), in the order of the gateway's ack pairs, which settle as they are.
#: The stream worker names notifications by UUID, a gateway by the id's text as its frames and its clients'
#: acks carry it (PostgreSQL takes either).
Key = tuple[str, uuid.UUID | str]
Handoff = tuple[uuid.UUID | str, str, str]  # (notification id, user id, dispatched | offline)


class DispatchLog:
    """Hand-offs wait here until they are ``delay_s`` old, then are written in one statement per chunk;
    those ``settle``d meanwhile (acknowledged) are not written at all.

    The age counts per batch of hand-offs, not per flush period: a batch added just before a periodic
    flush would otherwise be written at once, before its acknowledgement (typically tens of ms later)
    could make the write unnecessary.
    """

    def __init__(self, pool: Record, delay_s: float) -> None:
        self._pool = pool
        self._delay_s = delay_s
        self._open: dict[Key, str] = {}  # held and not settled -> the state to write
        self._held: deque[tuple[float, Sequence[Key]]] = deque()  # (monotonic time added, keys), oldest first
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    def add(self, keys: Sequence[Key], status: str) -> None:
        """Hold ``keys``' hand-off to ``status`` (a DeliveryStatus value) for the delay."""
        if not keys:
            return
        if len(self._open) + len(keys) > HELD_MAX:
            self.dropped += len(keys)
            return
        self._open.update(dict.fromkeys(keys, status))
        self._held.append((time.monotonic(), keys))

    def settle(self, keys: Iterable[Key]) -> None:
        """These deliveries were acknowledged: their hand-offs need no write. (A loop in C: a gateway settles
        every delivery its clients acknowledge.)"""
        before = len(self._open)
        deque(map(self._open.pop, keys, repeat(None)), maxlen=0)
        if settled := before - len(self._open):
            metrics.HANDOFFS_SETTLED.inc(settled)

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

    def _take_due(self, cutoff: float) -> list[Handoff]:
        """The hand-offs held since ``cutoff`` or before and not settled, taken out of the log (in no order:
        the statement sorts them). Most of a gateway's were settled: they are skipped in C, not one by one."""
        due: list[Handoff] = []
        held, pop = self._held, self._open.pop
        while held and held[0][0] <= cutoff:
            for user, nid in self._open.keys() & held.popleft()[1]:
                due.append((nid, user, pop((user, nid))))
        return due

    async def flush(self, older_than_s: float = 0.0) -> None:
        """Write the hand-offs held for at least ``older_than_s`` (all of them by default)."""
        cutoff = time.monotonic() - older_than_s
        due = self._take_due(cutoff)
        for start in range(0, len(due), WRITE_CHUNK):
            chunk = due[start:start + WRITE_CHUNK]

            async def write(chunk: list[Handoff] = chunk) -> None:
                async with pg_errors("record hand-offs"), self._pool.acquire() as conn:
                    await sql.record_handoffs(conn, chunk)

            try:
                await retry_conflicts(write)
            except (StoreUnavailable, asyncio.CancelledError):
                self._hold_again(cutoff, due[start:])  # first in line for the next round (or close)
                raise
            self.written += len(chunk)
            for status, n in Counter(h[2] for h in chunk).items():
                metrics.HANDOFFS_WRITTEN.labels(status).inc(n)

    def _hold_again(self, at: float, handoffs: list[Handoff]) -> None:
        """Put back what a failed or cancelled round took, ahead of everything held; an ack that came
        meanwhile is not known any more: its write moves nothing (the UPDATE moves only open rows)."""
        keys: list[Key] = [(user, nid) for nid, user, _ in handoffs]
        for (nid, user, status) in handoffs:
            self._open.setdefault((user, nid), status)
        self._held.appendleft((at, keys))
