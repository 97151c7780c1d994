"""Retention: finished work older than ``retention_days`` leaves PostgreSQL, batch by batch.

Run by the retry worker as its own task (any number of retry workers may run it: the statements skip
rows another one holds). A round removes everything due, one bounded statement after another, then the
task waits ``retention_interval_s``; what is due and what is kept is decided in store/retention.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from notiflow import metrics
from notiflow.errors import StoreUnavailable
from notiflow.roles import RetentionSettings
from notiflow.service.ports import Record
from notiflow.store import retention as sql
from notiflow.store.pool import pg_errors

log = logging.getLogger(__name__)


class RetentionService:
    def __init__(self, settings: RetentionSettings, pool: Record) -> None:
        self._s = settings
        self._pool = pool

    async def run_once(self, stop: asyncio.Event | None = None) -> dict[str, int]:
        """Remove everything due now; returns the rows removed per table."""
        done = {"deliveries": 0, "delivery_attempts": 0, "notifications": 0, "dlq": 0, "poison_entries": 0}
        limit = self._s.retention_batch
        async with pg_errors("retention"), self._pool.acquire() as conn:
            before = await sql.cutoff(conn, self._s.retention_days * 86400)
            after = sql.FIRST
            while not (stop and stop.is_set()):
                n, attempts, last = await sql.remove_deliveries(conn, before, after, limit)
                self._count(done, deliveries=n, delivery_attempts=attempts)
                if n < limit:
                    break
                after = last
            after = sql.FIRST
            while not (stop and stop.is_set()):
                n, last = await sql.remove_notifications(conn, before, after, limit)
                self._count(done, notifications=n)
                if n < limit:
                    break
                after = last
            for table, remove in (("dlq", sql.remove_replayed_dlq), ("poison_entries", sql.remove_poison)):
                while not (stop and stop.is_set()):
                    n = await remove(conn, before, limit)
                    self._count(done, **{table: n})
                    if n < limit:
                        break
        return done

    @staticmethod
    def _count(done: dict[str, int], **removed: int) -> None:
        for table, n in removed.items():
            done[table] += n
            if n:
                metrics.RETENTION_REMOVED.labels(table).inc(n)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                done = await self.run_once(stop)
                if any(done.values()):
                    log.info("retention removed old rows", extra=done)
            except StoreUnavailable as exc:
                log.warning("retention round failed", extra={"error": str(exc)})
            except Exception:
                log.exception("retention round crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._s.retention_interval_s)
