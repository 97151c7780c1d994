"""The reconciler: PostgreSQL is the record, Redis only carries work; this puts back what Redis lacks.

Each round (under a PostgreSQL advisory lock, so any number of retry workers may run it):
1. Epoch: when Redis lost its data (restart without persistence, FLUSHALL) the epoch key is gone;
   the round that recreates it rebuilds the stream and the retry schedule from every open delivery.
2. Outbox: commits whose notifications were not all XADDed (a crash or a Redis fault between the two).
3. Stuck work: deliveries still pending or retrying long after they should have been processed
   (a lost ZADD, a replay whose XADD failed, a stream entry lost). No index follows the socket channel's
   state (acks and hand-offs must be HOT updates, migration 006): fresh pending work is looked at once, when
   it becomes stale, through the notifications past a cursor in commit order (migration 008: a late commit
   is not passed, and one that expired meanwhile is expired); work found or put back before (retries,
   re-enqueues, replays) carries a due time, which an index follows until the delivery is handed off.
4. Expiry. (Aged idempotency keys go with their day partitions: service/retention.py, migration 013.)
Between 2 and 3, topic expansions without a stream entry (outbox, or no progress for the stuck age) go back on
the stream, and unsubscription tombstones that no expansion needs are purged (service/expansion.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from notiflow.models import Channel, DeliveryStatus, StreamEntry
from notiflow.roles import WorkerSettings
from notiflow.service.ports import Record, WorkLog
from notiflow.store import reconcile as sql
from notiflow.store import topics as topics_sql
from notiflow.store.ingest import clear_outbox
from notiflow.store.pool import pg_errors
from notiflow.streams.work import retry_member

log = logging.getLogger(__name__)

PAGE = 2000
#: Outbox rows (ingest commits, each of up to an ingest batch of notifications) a round enqueues at most.
OUTBOX_COMMITS = 200
#: Notifications per page of the fresh sweep: the first page of a round, and the most a page grows to while
#: every page comes back full (a backlog: ingest outran the sweep).
FRESH_PAGE_MIN = 500
FRESH_PAGE_MAX = 20_000
#: Time a round's fresh sweep may take before the round commits, seconds (it goes on in the next round). It
#: keeps the reconciler's transaction short while it follows a backlog of any size.
FRESH_ROUND_S = 1.0

#: How long an unsubscription is kept as a tombstone at least, s: far longer than any ingest transaction that
#: drew an earlier cutoff can stay open (a send committed after the purge would otherwise miss its subscriber).
TOMBSTONE_KEEP_S = 3600.0

Page = Callable[[tuple[uuid.UUID, str] | None], Awaitable[list[dict[str, Any]]]]


class Reconciler:
    """One round at a time; ``run_once`` returns what it did, for logs and tests."""

    def __init__(self, *, settings: WorkerSettings, pool: Record, work: WorkLog) -> None:
        self._s = settings
        self._pool = pool
        self._work = work
        #: The last round's fresh sweep stopped with work left (a full page when its time was up): the next
        #: round should come at once rather than after the reconcile interval.
        self.behind = False

    async def run_once(self) -> dict[str, int]:
        done = {"rebuilt": 0, "outbox": 0, "stuck": 0, "expired": 0, "topics": 0}
        async with pg_errors("reconcile"), self._pool.acquire() as conn, conn.transaction():
            if not await sql.try_lock(conn):
                return done
            lost = await self._work.claim_epochs()
            if lost:
                await self._work.ensure_group()
                only = None if len(lost) == len(self._work.partitions) else set(lost)
                done["rebuilt"] = await self._requeue(
                    conn, lambda after: sql.all_work(conn, after=after, limit=PAGE), touch=False, only=only
                )
                log.warning("redis had no epoch: rebuilt work from postgresql",
                            extra={"entries": done["rebuilt"], "partitions": lost})
            rows, outbox = await sql.outbox(conn, self._s.outbox_grace_s, OUTBOX_COMMITS)
            if rows:
                # After a rebuild their open work is on the stream already; only the rows are left to delete.
                if not done["rebuilt"]:
                    done["outbox"] = await self._requeue(
                        conn, lambda after: sql.work_of(conn, outbox, after=after, limit=PAGE), touch=False
                    )
                await clear_outbox(self._pool, rows)
            stale_s = self._s.stuck_after_s
            done["topics"] = await self._topic_sends(conn, outbox, stale_s)
            done["stuck"] = await self._requeue(
                conn, lambda after: sql.stale_work(conn, after=after, stale_s=stale_s, limit=PAGE), touch=True
            )
            fresh, late_expired = await self._fresh(conn, stale_s)
            done["stuck"] += fresh
            done["expired"] = late_expired + await sql.expire_due(conn, PAGE)
        return done

    async def _topic_sends(self, conn: Any, outbox: list[uuid.UUID], stale_s: float) -> int:
        """Topic expansions whose stream entry is missing (never added: the outbox; or lost: no progress for
        ``stale_s``) go back on the stream; tombstones no expansion needs any more go."""
        sends = await topics_sql.stale_sends(conn, stale_s, PAGE, outbox)
        await self._work.add([StreamEntry(nid, (topic,), Channel.TOPIC) for nid, topic in sends])
        await topics_sql.purge(conn, TOMBSTONE_KEEP_S, PAGE)
        return len(sends)

    async def _requeue(self, conn: Any, page: Page, *, touch: bool, only: set[int] | None = None) -> int:
        """Put back every page of open work that ``page`` (a keyset reader) finds; with ``only``, the work of
        the users of those partitions (the ones whose Redis data was lost)."""
        moved = 0
        after: tuple[uuid.UUID, str] | None = None
        while True:
            rows = await page(after)
            if not rows:
                return moved
            after = (rows[-1]["notification_id"], rows[-1]["user_id"])
            full = len(rows) >= PAGE
            if only is not None:
                rows = [r for r in rows if self._work.partition_of(r["user_id"]) in only]
            moved += await self._put_back(conn, rows, touch=touch)
            if not full:
                return moved

    async def _fresh(self, conn: Any, stale_s: float) -> tuple[int, int]:
        """Pending socket work of the notifications that became stale since the last round, in commit order,
        looked at once: what is still pending is put back and from then on in the stale sweep's view, what
        expired meanwhile is expired. Pages follow the backlog: each full page doubles the next one, within
        FRESH_ROUND_S. Returns (entries put back, deliveries expired)."""
        start = after = await sql.fresh_cursor(conn)
        moved = expired = 0
        self.behind = False
        size = FRESH_PAGE_MIN
        clock = time.monotonic()
        while True:
            page = await sql.fresh_page(conn, after, stale_s, size)
            if page.following is None:
                break
            moved += await self._put_back(conn, page.rows, touch=False)  # the page's statement touched them
            expired += page.expired
            after = page.following
            if page.taken < size:
                break
            if time.monotonic() - clock > FRESH_ROUND_S:
                self.behind = True
                break
            size = min(size * 2, FRESH_PAGE_MAX)
        if after != start:
            await sql.set_fresh_cursor(conn, *after)
        return moved, expired

    async def _put_back(self, conn: Any, rows: list[dict[str, Any]], *, touch: bool) -> int:
        """Pending channels on the stream, retrying ones on the schedule; ``touch`` marks them seen now."""
        if not rows:
            return 0
        pending: dict[tuple[uuid.UUID, Channel], list[str]] = defaultdict(list)
        schedule: list[tuple[str, int]] = []
        for r in rows:
            nid, uid = r["notification_id"], r["user_id"]
            for channel, state, due in (
                (Channel.SOCKET, r["status"], r["next_attempt_at"]),
                (Channel.WEBHOOK, r["webhook_status"], r["webhook_next_at"]),
            ):
                if state == DeliveryStatus.PENDING:
                    pending[(nid, channel)].append(uid)
                elif state == DeliveryStatus.RETRYING:
                    schedule.append((retry_member(nid, uid, channel), sql.due_ms(due)))
        entries = [
            StreamEntry(nid, tuple(users[i : i + self._s.fanout_chunk]), channel)
            for (nid, channel), users in pending.items()
            for i in range(0, len(users), self._s.fanout_chunk)
        ]
        await self._work.add(entries)
        await self._work.schedule(schedule)
        if touch:
            # So that the next sweep does not take the same rows again before they had a chance.
            await sql.touch(conn, [(r["notification_id"], r["user_id"]) for r in rows])
        return len(entries) + len(schedule)
