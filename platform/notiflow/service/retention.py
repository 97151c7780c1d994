"""Retention: the record's time partitions are created ahead of need and dropped whole once expired.

Run by the retry worker as its own task; any number of retry workers may run it, one round at a time holds
the lock (the others skip the round). A round:
1. finalizes a partition detach that an interrupted round left pending;
2. creates the day partitions from yesterday to ``partitions.AHEAD_DAYS`` ahead (server clock) that are missing;
3. drops every partition over for a retention period whose notifications have all expired, with their DLQ
   rows (DETACH ... CONCURRENTLY, then DROP TABLE: no DELETE, no VACUUM debt, no lock that blocks writes);
4. the same for the idempotency keys' day partitions (created ahead; dropped once every key in them is past
   ``idempotency_window_s``, store/key_partitions.py);
5. removes parked poison entries older than the retention period, in bounded batches.
Then the task waits ``retention_interval_s``. What is dropped and when is decided in store/partitions.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from notiflow import metrics
from notiflow.errors import StoreUnavailable
from notiflow.roles import RetentionSettings
from notiflow.service.ports import Record
from notiflow.store import key_partitions, partitions
from notiflow.store import retention as sql
from notiflow.store.pool import pg_errors

log = logging.getLogger(__name__)


class RetentionService:
    def __init__(self, settings: RetentionSettings, pool: Record) -> None:
        self._s = settings
        self._pool = pool
        #: The last round's partition drops: each statement and its time, s (benchmarks, operators' logs).
        self.last_drops: list[list[tuple[str, float]]] = []

    async def run_once(self, stop: asyncio.Event | None = None) -> dict[str, int]:
        """One round; returns what it did: partitions created and dropped (days), DLQ and poison rows removed."""
        done = {"partitions_created": 0, "partitions_dropped": 0, "dlq": 0, "poison_entries": 0,
                "key_partitions_created": 0, "key_partitions_dropped": 0}
        retention_s = self._s.retention_days * 86400
        self.last_drops = []
        async with pg_errors("retention"), self._pool.acquire() as conn:
            if not await sql.try_lock(conn):
                return done
            # A session lock (DETACH ... CONCURRENTLY cannot run in a transaction, so no transaction-scoped one),
            # and the pool releases connections without resetting them: a round that does not end normally
            # closes its connection, which frees the lock, rather than leave it held on a pooled connection.
            try:
                await partitions.finish_detaches(conn)
                today = (await partitions.server_now(conn)).date()
                done["partitions_created"] = len(await partitions.ensure(conn, today))
                for part in await partitions.due(conn, retention_s):
                    if stop and stop.is_set():
                        break
                    timed: list[tuple[str, float]] = []
                    self._count(done, dlq=await partitions.drop(conn, part, timed), partitions_dropped=1)
                    self.last_drops.append(timed)
                await self._keys(conn, done, stop)
                before = await sql.cutoff(conn, retention_s)
                while not (stop and stop.is_set()):
                    n = await sql.remove_poison(conn, before, self._s.retention_batch)
                    self._count(done, poison_entries=n)
                    if n < self._s.retention_batch:
                        break
            except BaseException:
                conn.terminate()
                raise
            await sql.unlock(conn)
        return done

    async def _keys(self, conn: Any, done: dict[str, int], stop: asyncio.Event | None) -> None:
        """The idempotency keys' partitions: finish an interrupted drop, create ahead, drop the aged ones."""
        await key_partitions.finish_detaches(conn)
        now = await partitions.server_now(conn)
        window_s = self._s.idempotency_window_s
        done["key_partitions_created"] = len(await key_partitions.ensure(conn, now.date(), window_s))
        for part in await key_partitions.due(conn, window_s, now):
            if stop and stop.is_set():
                break
            await key_partitions.drop(conn, part)
            self._count(done, key_partitions_dropped=1)

    @staticmethod
    def _count(done: dict[str, int], **removed: int) -> None:
        for what, n in removed.items():
            done[what] += n
            if n:
                metrics.RETENTION_REMOVED.labels(what).inc(n)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                done = await self.run_once(stop)
                if any(done.values()):
                    log.info("retention round", extra=done)
            except StoreUnavailable as exc:
                log.warning("retention round failed", extra={"error": str(exc)})
            except Exception:
                log.exception("retention round crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._s.retention_interval_s)
