"""Entries left pending: taking over those another consumer (likely dead) held too long, and parking poison
(an entry that cannot be parsed, or crashes whoever processes it) so that the stream moves on. The stream
worker (worker/stream.py) hands what it reclaims back to its own batch handling."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from notiflow.errors import StoreUnavailable
from notiflow.lifecycle import pause
from notiflow.models import Channel, StreamEntry
from notiflow.roles import WorkerSettings
from notiflow.service.delivery import DeliveryService
from notiflow.service.expansion import Expander
from notiflow.service.ports import WorkLog
from notiflow.streams import bundle

log = logging.getLogger(__name__)

Raw = tuple[str, dict[str, str]]
#: The stream worker's handling of reclaimed entries (``StreamWorker.handle`` with ``reclaimed=True``).
Handle = Callable[[list[Raw]], Awaitable[None]]


async def ack(work: WorkLog, entry_ids: list[str], units: list[int] | None = None) -> None:
    """Acknowledge (and delete) entries; ``units`` is what each counted towards the backlog (default 1)."""
    try:
        await work.ack(entry_ids, units)
    except StoreUnavailable as exc:
        # Outcomes are durable; a reclaimed entry finds its deliveries done and changes nothing.
        log.warning("ack failed; entries will be reclaimed", extra={"error": str(exc)})


class Reclaimer:
    """Reclaims idle entries every ``reclaim_interval_s``, and parks poison for the stream worker."""

    def __init__(
        self, *, settings: WorkerSettings, deliveries: DeliveryService, work: WorkLog, topics: Expander | None,
        handle: Handle,
    ) -> None:
        self._s = settings
        self._d = deliveries
        self._work = work
        self._topics = topics
        self._handle = handle
        self._consumer = settings.node_id

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, self._s.reclaim_interval_s)
            try:
                await self.reclaim()
            except StoreUnavailable as exc:
                log.warning("reclaim failed", extra={"error": str(exc)})
            except Exception:
                log.exception("reclaim crashed")

    async def reclaim(self) -> int:
        """Take over entries another consumer (likely dead) left unacknowledged for too long. An entry
        already claimed too often crashes whoever takes it: it is parked instead of processed."""
        idle = await self._work.idle(self._s.reclaim_idle_ms, self._s.worker_batch)
        if not idle:
            return 0
        times = {p.entry_id: p.deliveries for p in idle}
        claimed = await self._work.claim(self._consumer, self._s.reclaim_idle_ms, list(times))
        fresh: list[Raw] = []
        for entry_id, fields in claimed:
            if fields is None:
                await ack(self._work, [entry_id])  # deleted meanwhile: nothing left to do
            elif times[entry_id] >= self._s.poison_max_deliveries:
                reason = f"claimed {times[entry_id]} times without an outcome"
                try:
                    entries: list[StreamEntry | None] = list(bundle.parse(fields))
                except (KeyError, ValueError):
                    entries = [None]
                # A bundle (one its unpacking never reached) is parked item by item, then acknowledged.
                parked = [await self.park(entry_id, fields, e, reason) for e in entries]
                if all(parked):
                    await ack(self._work, [entry_id], [bundle.units(fields)])
            else:
                fresh.append((entry_id, fields))
        if fresh:
            log.info("reclaimed idle entries", extra={"entries": len(fresh)})
            await self._handle(fresh)
        return len(claimed)

    async def unpack(self, entry_id: str, entries: list[StreamEntry]) -> None:
        """A reclaimed bundle goes back as one entry per notification, read from the rows: should one of them
        crash whoever processes it, it alone reaches the poison bound. Added before the bundle's ack."""
        try:
            await self._work.add([dataclasses.replace(e, carried=None) for e in entries])
        except StoreUnavailable as exc:
            log.warning("could not unpack a reclaimed bundle; left pending", extra={"entry_id": entry_id,
                                                                                     "error": str(exc)})
            return
        await ack(self._work, [entry_id], [len(entries)])

    async def park(self, entry_id: str, fields: dict[str, str], entry: StreamEntry | None, reason: str) -> bool:
        try:
            if entry is not None and entry.channel is Channel.TOPIC and self._topics is not None:
                await self._topics.park(entry_id, fields, entry.notification_id, reason)
            else:
                await self._d.park_poison(entry_id, fields, entry, reason)
        except Exception as exc:  # noqa: BLE001 - left pending: the next reclaim tries again
            log.warning("could not park poison entry", extra={"entry_id": entry_id, "error": str(exc)})
            return False
        return True

    async def poison(self, entry_id: str, fields: dict[str, str], entry: StreamEntry | None, reason: str) -> None:
        """Park an entry and acknowledge it (all its units), or leave it pending if it could not be parked."""
        if await self.park(entry_id, fields, entry, reason):
            await ack(self._work, [entry_id], [bundle.units(fields)])
