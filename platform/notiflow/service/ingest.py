"""Accepting notifications: bounded, idempotent, group-committed, then handed to the stream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections import deque
from typing import Any

import orjson

from notiflow import metrics
from notiflow.batching import Batcher
from notiflow.errors import ApiError, BackpressureError, IdempotencyConflict, StoreUnavailable
from notiflow.lifecycle import Deadline
from notiflow.models import NewNotification
from notiflow.roles import GatewaySettings
from notiflow.service.enqueue import stream_entries
from notiflow.service.ports import Record, WorkLog
from notiflow.store import collapse
from notiflow.store import ingest as sql
from notiflow.store import topics as topics_sql
from notiflow.store.pool import pg_errors, pg_write_errors
from notiflow.webhook import check_webhook_url

log = logging.getLogger(__name__)

Accepted = tuple[int, dict[str, Any]]  # (HTTP status, body)

#: Notifications per XADD pipeline, at least: whole commits are taken until it is reached (a commit is never split,
#: so that the pipeline's answer settles its outbox row).
ENQUEUE_BATCH = 2000
ENQUEUE_QUEUE_MAX = 100_000  # committed notifications held for XADD before the outbox sweep takes over


def request_hash(body: dict[str, Any]) -> str:
    """A stable digest of a validated request: the same request always hashes the same."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class IngestService:
    """The accept use case. One per gateway process."""

    def __init__(self, *, settings: GatewaySettings, pool: Record, work: WorkLog) -> None:
        self._s = settings
        self._pool = pool
        self._work = work
        self._batcher: Batcher[NewNotification, Accepted] = Batcher(
            self._flush, max_batch=settings.ingest_batch_max, name="ingest"
        )
        # The backlog estimate: stream length at the last XLEN, plus the entries this node XADDed since,
        # plus the entries it committed that still wait for their XADD.
        self._backlog = 0
        self._xadded = 0
        self._unstreamed = 0
        self._count_lock = asyncio.Lock()
        self._in_flight = 0  # entries of requests admitted but not answered yet
        self._refresher: asyncio.Task[None] | None = None
        # Committed notifications waiting for their XADD, in commit order. Bounded: past the bound they
        # are left to the outbox sweep rather than held in memory while Redis is away.
        self._to_enqueue: deque[tuple[uuid.UUID, list[NewNotification]]] = deque()  # (outbox row, its notifications)
        self._queued = 0  # notifications in _to_enqueue
        self._enqueue_wake = asyncio.Event()
        self._enqueue_idle = asyncio.Event()
        self._enqueue_idle.set()  # nothing queued yet: shutting down now must not wait
        self._enqueuer: asyncio.Task[None] | None = None
        self.enqueue_dropped = 0

    async def start(self) -> None:
        """Refuses to start (PartitionsChanged) with another partition count than the deployment's; when Redis
        does not answer, the check is left to the workers, which cannot start without it."""
        with contextlib.suppress(StoreUnavailable):
            await self._work.check_partitions()
        self._batcher.start()
        self._refresher = asyncio.create_task(self._refresh_backlog(), name="backlog-refresh")
        self._enqueuer = asyncio.create_task(self._enqueue_loop(), name="enqueue")

    async def close(self, grace_s: float) -> None:
        """Commit what is queued, then XADD what is committed, both within ``grace_s``."""
        deadline = Deadline(grace_s)
        if self._refresher:
            self._refresher.cancel()
        await self._batcher.close(deadline.left())
        if self._enqueuer:
            # Whatever is not enqueued by now is found by the outbox sweep: nothing is lost by stopping.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), timeout=deadline.left())
            self._enqueuer.cancel()

    def check(self, item: NewNotification) -> None:
        """What validation of the request body alone cannot know: configuration (the longest ttl, allowed
        webhook hosts)."""
        longest = int(self._s.retention_days * 86400)
        if item.ttl_seconds is not None and item.ttl_seconds > longest:
            raise ApiError(
                422,
                "ttl_too_long",
                f"ttl_seconds must be at most {longest} (the retention period, NOTIFLOW_RETENTION_DAYS)",
                {"max_ttl_seconds": longest},
            )
        if item.webhook_url:
            check_webhook_url(item.webhook_url, self._s.webhook_allowed_hosts)
        if item.status_url:
            check_webhook_url(item.status_url, self._s.webhook_allowed_hosts, field="status_url")

    async def accept(self, item: NewNotification) -> Accepted:
        self.check(item)
        (result,) = await self.accept_many([item])
        if isinstance(result, BaseException):
            raise result
        return result

    async def accept_many(self, items: list[NewNotification]) -> list[Accepted | IdempotencyConflict]:
        """Commit checked items together (one transaction); per item its answer, or the conflict of an
        idempotency key used before with another body. Any other failure fails them all."""
        # What this node accepted since the last XLEN counts at once, so that a burst cannot overshoot
        # the bound by a whole refresh period's worth; other nodes' bursts show at the next refresh.
        backlog = self._backlog + self._xadded + self._unstreamed + self._in_flight
        if backlog >= self._s.stream_max_backlog:
            raise BackpressureError(f"backlog {backlog} is over its bound", retry_after_s=1)
        entries = sum(self._entry_count(i) for i in items)
        self._in_flight += entries
        try:
            results = await self._batcher.submit_many(items)
        finally:
            self._in_flight -= entries
        out: list[Accepted | IdempotencyConflict] = []
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, IdempotencyConflict):
                raise r
            out.append(r)
        metrics.ACCEPTED.inc(sum(1 for r in out if not isinstance(r, BaseException)))
        return out

    async def _refresh_backlog(self) -> None:
        # A cached figure keeps XLEN off the request path; when Redis is unreachable the last figure
        # stands, and PostgreSQL keeps accepting (the reconciler enqueues once Redis is back).
        # The lock keeps this node's XADDs out of the read's way: each entry is counted exactly once, in
        # XLEN or in _xadded (an XADD racing the read was counted twice before, and a bound of 5 admitted 4).
        while True:
            async with self._count_lock:
                with contextlib.suppress(StoreUnavailable):
                    length = await self._work.backlog()
                    self._backlog, self._xadded = length, 0
            await asyncio.sleep(0.1)

    async def _flush(self, items: list[NewNotification]) -> list[Accepted | BaseException]:
        try:
            return await self._commit(items)
        except StoreUnavailable:
            raise
        except Exception:
            if len(items) == 1:
                raise
            # One bad item must not fail its neighbours: commit them one by one to isolate it.
            log.exception("ingest batch failed; retrying its items one by one")
            results: list[Accepted | BaseException] = []
            for item in items:
                try:
                    results.extend(await self._commit([item]))
                except Exception as exc:  # noqa: BLE001 - handed to that item's caller
                    results.append(exc)
            return results

    async def _commit(self, items: list[NewNotification]) -> list[Accepted | BaseException]:
        # Within a batch the first request with a key is its primary; repeats follow its fate.
        primary: dict[sql.ScopedKey, NewNotification] = {}
        for item in items:
            if item.idempotency_key:
                primary.setdefault(sql.scoped_key(item), item)
        keyed = list(primary.values())
        # A failure to get a connection stored nothing (503 unavailable); one after the statements were sent
        # has an unknown outcome (503 outcome_unknown): the reply may be all that was lost.
        async with pg_errors("ingest"), self._pool.acquire() as conn, pg_write_errors("ingest"):
            if keyed or any(i.collapse_key is not None or i.topic is not None for i in items):
                async with conn.transaction():
                    claim = await sql.claim_idempotency_keys(conn, keyed, self._s.idempotency_window_s)
                    fresh = [i for i in items if self._is_fresh(i, primary, claim)]
                    outbox_id = await sql.insert_notifications(conn, fresh, self._s.retention_days * 86400)
                    # In the insert's transaction, after it (store/collapse.py says why not inside it).
                    replaced = await collapse.apply_collapse(conn, collapse.keyed_rows(fresh))
                    await topics_sql.insert_sends(conn, fresh)  # a topic item's cutoff: before its 202
                metrics.REPLACED.inc(replaced)
            else:
                # One statement is its own transaction: no BEGIN/COMMIT round trips around it.
                claim = sql.KeyClaim(set(), {})
                fresh = items
                outbox_id = await sql.insert_notifications(conn, fresh, self._s.retention_days * 86400)
        self._queue_for_stream(fresh, outbox_id)
        return [self._result(item, primary, claim) for item in items]

    @staticmethod
    def _is_fresh(item: NewNotification, primary: dict[sql.ScopedKey, NewNotification], claim: sql.KeyClaim) -> bool:
        """True when this request creates a notification (no key, or the first holder of a new key)."""
        if not item.idempotency_key:
            return True
        key = sql.scoped_key(item)
        return primary[key] is item and key in claim.won

    @staticmethod
    def _result(
        item: NewNotification, primary: dict[sql.ScopedKey, NewNotification], claim: sql.KeyClaim
    ) -> Accepted | BaseException:
        if not item.idempotency_key:
            return 202, sql.accepted_body(item)
        key = sql.scoped_key(item)
        first = primary[key]
        if key in claim.won:
            if item.request_hash != first.request_hash:
                return IdempotencyConflict()
            return 202, sql.accepted_body(first)
        stored_hash, response = claim.existing[key]
        if item.request_hash != stored_hash:
            return IdempotencyConflict()
        return 202, response

    def _entry_count(self, item: NewNotification) -> int:
        if item.topic is not None:
            return 1
        chunks = -(-len(item.user_ids) // self._s.fanout_chunk)
        return chunks * (2 if item.webhook_url else 1)

    def _queue_for_stream(self, fresh: list[NewNotification], outbox_id: uuid.UUID | None) -> None:
        if outbox_id is None:
            return  # nothing committed (every item a repeat of a key)
        if self._queued >= ENQUEUE_QUEUE_MAX:
            self.enqueue_dropped += len(fresh)  # their outbox row stays: the reconciler enqueues them
            return
        self._unstreamed += sum(self._entry_count(i) for i in fresh)
        self._to_enqueue.append((outbox_id, fresh))
        self._queued += len(fresh)
        self._enqueue_idle.clear()
        self._enqueue_wake.set()

    def _take_commits(self) -> tuple[list[uuid.UUID], list[NewNotification]]:
        """Whole commits off the queue, until ENQUEUE_BATCH notifications: their outbox rows and notifications."""
        rows: list[uuid.UUID] = []
        batch: list[NewNotification] = []
        while self._to_enqueue and len(batch) < ENQUEUE_BATCH:
            row, items = self._to_enqueue.popleft()
            rows.append(row)
            batch += items
        self._queued -= len(batch)
        return rows, batch

    async def _drained(self) -> None:
        await self._enqueue_idle.wait()

    async def _enqueue_loop(self) -> None:
        """After the commit, off the request path: XADD whole commits, then delete their outbox rows. One task:
        entries reach the stream in commit order. A failure loses nothing: the reconciler enqueues the commits
        whose rows stay."""
        while True:
            await self._enqueue_wake.wait()
            self._enqueue_wake.clear()
            while self._to_enqueue:
                self._enqueue_idle.clear()
                rows, batch = self._take_commits()
                entries = stream_entries(batch, self._s.fanout_chunk)
                try:
                    async with self._count_lock:
                        try:
                            await self._work.add(entries)
                        finally:
                            # Counted as unstreamed until the XADD has answered and as XADDed from then on, in one
                            # step: subtracting before the XADD left a window, one Redis round trip long, in which
                            # these entries counted nowhere and a burst was admitted twice over the bound.
                            self._unstreamed -= len(entries)
                        self._xadded += len(entries)
                    await sql.clear_outbox(self._pool, rows)
                except Exception as exc:  # noqa: BLE001 - the outbox covers every failure after the commit
                    log.warning(
                        "enqueue after commit failed; the reconciler will enqueue",
                        extra={"error": str(exc), "notifications": len(batch)},
                    )
            self._enqueue_idle.set()
