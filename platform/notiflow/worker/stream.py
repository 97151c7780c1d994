"""The stream worker: reads the notifications stream in batches and acknowledges only after the
outcome of every entry in the batch is durable in PostgreSQL. Reclaiming idle entries and parking poison:
worker/reclaim.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from notiflow import metrics
from notiflow.errors import StoreUnavailable
from notiflow.health import Health
from notiflow.lifecycle import Deadline, drain, pause
from notiflow.models import Channel, Outcome, StreamEntry
from notiflow.roles import WorkerSettings
from notiflow.service.clock import RecordClock
from notiflow.service.delivery import DeliveryService
from notiflow.service.expansion import Expander
from notiflow.service.ports import WorkLog
from notiflow.service.telemetry import Telemetry
from notiflow.streams import bundle
from notiflow.worker.reclaim import Raw, Reclaimer, ack

log = logging.getLogger(__name__)

Parsed = tuple[str, StreamEntry]
Process = Callable[[list[StreamEntry]], Awaitable[list[Outcome]]]
#: Topic expansions one worker runs at once (each a page at a time; a topic's sends wait for each other anyway).
TOPIC_EXPANSIONS = 4


class StreamWorker:
    def __init__(
        self, *, settings: WorkerSettings, deliveries: DeliveryService, work: WorkLog,
        telemetry: Telemetry | None = None, clock: RecordClock | None = None, health: Health | None = None,
        topics: Expander | None = None,
    ) -> None:
        self._s = settings
        self._health = health or Health()  # what /healthz reads (metrics.serve)
        self._clock = clock  # the deliveries' clock (service/clock.py), kept in step with PostgreSQL's here
        self._telemetry = telemetry
        self._d = deliveries
        self._work = work
        self._consumer = settings.node_id
        self._hooks: set[asyncio.Task[None]] = set()
        # Bounds webhook *entries* in flight (each may name up to fanout_chunk recipients), so the read loop
        # stops taking work while they run; DeliveryService separately bounds the HTTP calls themselves.
        self._hook_entries = asyncio.Semaphore(settings.webhook_concurrency)
        self._topics = topics
        self._expansions = asyncio.Semaphore(TOPIC_EXPANSIONS)
        self._stop = asyncio.Event()
        self._reclaimer = Reclaimer(settings=settings, deliveries=deliveries, work=work, topics=topics,
                                    handle=functools.partial(self.handle, reclaimed=True))
        self.processed = 0
        self.held_through_outage = 0  # batches processed again in place after a store outage

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self._work.check_partitions()
        await self._work.ensure_group()
        self._d.dispatch_log.start()
        reclaimer = asyncio.create_task(self._reclaimer.run(stop), name="reclaim")
        housekeeping = [reclaimer]
        if self._clock:
            housekeeping.append(asyncio.create_task(self._clock.run(stop), name="clock"))
        if self._telemetry:
            self._telemetry.start()
        try:
            await self._read_partitions(stop)
        finally:
            self._health.stopped()
        # Intake has stopped; webhook calls in flight, then the held hand-offs, within one grace period.
        deadline = Deadline(self._s.shutdown_grace_s)
        reclaimer.cancel()
        await drain([*housekeeping, *self._hooks], deadline.left())
        await self._d.dispatch_log.close(deadline.left())
        if self._telemetry:
            await self._telemetry.close(deadline.left())

    async def _read_partitions(self, stop: asyncio.Event) -> None:
        """One read loop per partition (each blocks on its own stream, which may live on another cluster
        node); their batches are processed concurrently, as webhook entries already are."""
        if len(self._work.partitions) == 1:
            await self._read_loop(stop, 0)
            return
        async with asyncio.TaskGroup() as tasks:
            for p in self._work.partitions:
                tasks.create_task(self._read_loop(stop, p), name=f"read-p{p}")

    async def _read_loop(self, stop: asyncio.Event, partition: int) -> None:
        delay_s = 0.1
        while not stop.is_set():
            self._health.beat()
            try:
                raw = await self._work.read(
                    self._consumer, self._s.worker_batch, self._s.worker_block_ms, partition
                )
                delay_s = 0.1
            except StoreUnavailable as exc:
                log.warning("stream read failed", extra={"error": str(exc)})
                await pause(stop, delay_s)
                delay_s = min(delay_s * 2, 5.0)
                continue
            if raw:
                await self.handle(raw)

    async def handle(self, raw: list[Raw], *, reclaimed: bool = False) -> None:
        sockets: list[Parsed] = []
        for entry_id, fields in raw:
            try:
                entries = bundle.parse(fields)
            except (KeyError, ValueError) as exc:
                await self._reclaimer.poison(entry_id, fields, None, f"malformed entry: {exc}")
                continue
            if reclaimed and bundle.is_bundle(fields):
                await self._reclaimer.unpack(entry_id, entries)
                continue
            for entry in entries:
                if reclaimed and entry.carried is not None:
                    # Someone had it before and may have recorded an outcome: read the rows, not the entry.
                    entry = dataclasses.replace(entry, carried=None)
                if entry.channel is Channel.TOPIC and self._topics is not None:
                    # An expansion takes seconds (pages of subscribers): beside the loop, like webhook calls.
                    await self._expansions.acquire()
                    self._beside(self._expand(entry_id, entry, self._topics))
                elif entry.channel is Channel.WEBHOOK:
                    # Webhook calls may take seconds: they run beside the loop, bounded in number.
                    await self._hook_entries.acquire()
                    self._beside(self._hook((entry_id, entry)))
                else:
                    sockets.append((entry_id, entry))
        if sockets:
            await self._process(sockets, self._d.deliver_socket)

    def _beside(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the read loop (its slot already taken), kept until done; the stop drains them."""
        task = asyncio.create_task(work)
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)

    async def _hook(self, item: Parsed) -> None:
        try:
            await self._process([item], self._d.deliver_webhook)
        finally:
            self._hook_entries.release()
            # The read loop may be waiting for this slot (backpressure): a call that ended is progress, and
            # each is bounded by NOTIFLOW_WEBHOOK_TIMEOUT_S, far below health.STALE_AFTER_S.
            self._health.beat()

    async def _expand(self, entry_id: str, entry: StreamEntry, topics: Expander) -> None:
        """Expand a topic notification to the end (held in place through store outages), then acknowledge its
        entry, kept claimed meanwhile. Anything else leaves it pending: it is reclaimed, resumes where the last
        page left it, and counts towards the poison bound."""
        keeper = asyncio.create_task(self._keep([entry_id]), name="keep-expansion")
        try:
            if await topics.expand_held(entry.notification_id, self._stop):
                await self._ack([entry_id])
                self.processed += 1
        except Exception:
            log.exception("topic expansion failed; left pending", extra={"entry_id": entry_id})
        finally:
            keeper.cancel()
            self._expansions.release()
            self._health.beat()

    async def _process(self, items: list[Parsed], process: Process) -> None:
        """Process, then acknowledge every entry whose items are all settled (a bundle names many items).
        ``processed`` counts the entries acknowledged with at least one item not parked as poison."""
        parked: list[str] = []
        left = await self._settle(items, process, parked)
        done = list(dict.fromkeys(i for i, _ in items if i not in left))
        named, poisoned = Counter(i for i, _ in items), Counter(parked)
        await self._ack(done, [named[i] for i in done])
        count = sum(1 for i in done if poisoned[i] < named[i])
        self.processed += count
        metrics.ENTRIES.inc(count)

    async def _settle(self, items: list[Parsed], process: Process, parked: list[str]) -> set[str]:
        """Record the items' outcomes, or park what fails as poison (its entry id is added to ``parked``);
        returns the entry ids left pending."""
        try:
            await self._through_outages(items, process)
        except StoreUnavailable as exc:
            # Stopping mid-outage: not acknowledged, so another consumer reclaims the entries later.
            log.warning("batch not processed; left pending", extra={"error": str(exc), "entries": len(items)})
            return {i for i, _ in items}
        except Exception as exc:
            if len(items) > 1:
                # Bisect: find the item that fails, so that its neighbours (in its bundle too) still get through.
                half = len(items) // 2
                first = await self._settle(items[:half], process, parked)
                return first | await self._settle(items[half:], process, parked)
            entry_id, entry = items[0]
            log.exception("entry failed; parked as poison", extra={"entry_id": entry_id})
            if not await self._reclaimer.park(entry_id, entry.fields(), entry, f"{type(exc).__name__}: {exc}"):
                return {entry_id}
            parked.append(entry_id)
        return set()

    async def _through_outages(self, items: list[Parsed], process: Process) -> None:
        """Process the batch, and while a store is unavailable, keep it and try again in place (with
        backoff, until the process stops). Leaving it pending instead had other consumers reclaim it every
        ``RECLAIM_IDLE_MS``, and each reclaim counted towards ``POISON_MAX_DELIVERIES``: a long enough outage
        parked healthy entries as poison. A keeper task resets their idle time meanwhile, without counting a
        delivery, however long each attempt takes to fail."""
        delay_s = 0.1
        keeper: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    await process([e for _, e in items])
                    return
                except StoreUnavailable as exc:
                    if self._stop.is_set():
                        raise
                    if keeper is None:
                        log.warning("store unavailable; holding the batch until it answers",
                                    extra={"error": str(exc), "entries": len(items)})
                        keeper = asyncio.create_task(  # noqa: RUF006 - kept in `keeper`, cancelled below
                            self._keep([i for i, _ in items]), name="keep-held")
                    self.held_through_outage += 1
                await pause(self._stop, delay_s)
                self._health.beat()  # held, not stuck: the loop is alive and trying
                delay_s = min(delay_s * 2, 5.0)
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper

    async def _keep(self, entry_ids: list[str]) -> None:
        period_s = self._s.reclaim_idle_ms / 3000
        while True:
            await asyncio.sleep(period_s)
            # If Redis is the one away, nobody can reclaim the entries meanwhile either.
            with contextlib.suppress(StoreUnavailable):
                await self._work.keep(self._consumer, entry_ids)

    async def _ack(self, entry_ids: list[str], units: list[int] | None = None) -> None:
        await ack(self._work, entry_ids, units)

    async def reclaim(self) -> int:
        """Take over idle entries of other consumers (worker/reclaim.py); returns how many were claimed."""
        return await self._reclaimer.reclaim()
