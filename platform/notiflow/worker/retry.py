"""The retry worker: moves due retries from the ZSET back into the stream, and runs the reconciler, retention
and the delivery receipt sender."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from notiflow import metrics
from notiflow.errors import StoreUnavailable
from notiflow.health import Health
from notiflow.lifecycle import Deadline, drain, pause
from notiflow.roles import WorkerSettings
from notiflow.service.clock import Clock, RecordClock, SystemClock
from notiflow.service.ports import WorkLog
from notiflow.service.receipts import ReceiptSender
from notiflow.service.reconciler import Reconciler
from notiflow.service.retention import RetentionService
from notiflow.service.telemetry import Telemetry

log = logging.getLogger(__name__)


class RetryWorker:
    def __init__(
        self, *, settings: WorkerSettings, work: WorkLog, reconciler: Reconciler, telemetry: Telemetry | None = None,
        retention: RetentionService | None = None, clock: RecordClock | None = None, health: Health | None = None,
        receipts: ReceiptSender | None = None,
    ) -> None:
        self._s = settings
        self._health = health or Health()  # what /healthz reads (metrics.serve)
        # Retries are due by PostgreSQL's clock, which wrote their due times (service/clock.py).
        self._clock: Clock = clock or SystemClock()
        self._record_clock = clock
        self._work = work
        self._reconciler = reconciler
        self._telemetry = telemetry
        self._retention = retention
        self._receipts = receipts
        self.moved = 0

    async def run(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(StoreUnavailable):  # the stream workers cannot start without the check
            await self._work.check_partitions()
        housekeeping = [asyncio.create_task(self._reconcile_loop(stop), name="reconcile")]
        if self._retention:
            housekeeping.append(asyncio.create_task(self._retention.run(stop), name="retention"))
        if self._receipts:
            housekeeping.append(asyncio.create_task(self._receipts.run(stop), name="receipts"))
        if self._record_clock:
            housekeeping.append(asyncio.create_task(self._record_clock.run(stop), name="clock"))
        if self._telemetry:
            self._telemetry.start()
        try:
            await self._move_loop(stop)
        finally:
            self._health.stopped()
        deadline = Deadline(self._s.shutdown_grace_s)
        await drain(housekeeping, deadline.left())
        if self._telemetry:
            await self._telemetry.close(deadline.left())

    async def _move_loop(self, stop: asyncio.Event) -> None:
        poll_s = self._s.retry_poll_ms / 1000
        while not stop.is_set():
            self._health.beat()
            try:
                n = await self._work.move_due(self._s.retry_batch, now_ms=self._clock.now_ms())
            except StoreUnavailable as exc:
                log.warning("moving due retries failed", extra={"error": str(exc)})
                await pause(stop, 1.0)
                continue
            self.moved += n
            metrics.RETRIES_MOVED.inc(n)
            if n < self._s.retry_batch:  # a full batch means more are due: go again at once
                await pause(stop, poll_s)

    async def _reconcile_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            behind = False
            try:
                done = await self._reconciler.run_once()
                for kind, n in done.items():
                    if n:
                        metrics.REPAIRS.labels(kind).inc(n)
                if any(done.values()):
                    log.info("reconciled", extra=done)
                behind = self._reconciler.behind
            except StoreUnavailable as exc:
                log.warning("reconcile failed", extra={"error": str(exc)})
            except Exception:
                log.exception("reconcile crashed")
            # Behind (ingest outran the fresh sweep): the next round at once, each round a short transaction.
            await pause(stop, 0 if behind else self._s.reconcile_interval_s)
