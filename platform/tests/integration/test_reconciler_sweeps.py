"""The reconciler's one-pass sweeps on a real PostgreSQL (store/reconcile.py, migration 006): no index
follows the socket state, so fresh work and expiries are found through the notifications past a cursor.
A cursor only moves past what its sweep has finished."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from helpers import wait_for

from notiflow.store import reconcile as sql

pytestmark = pytest.mark.timeout(30)


async def _notification(conn: Any, users: list[str], *, created_ago_s: float = 0,
                        expired_ago_s: float | None = None) -> uuid.UUID:
    nid = uuid.uuid4()
    await conn.execute(
        "INSERT INTO notifications (id, event, payload, recipients, created_at, expires_at) "
        "VALUES ($1, 'e', '{}', $2, now() - $3 * interval '1 second', now() - $4 * interval '1 second')",
        nid, len(users), created_ago_s, -86400 if expired_ago_s is None else expired_ago_s,
    )
    await conn.executemany(
        "INSERT INTO deliveries (notification_id, user_id, seq, status) VALUES ($1, $2, 1, 'offline')",
        [(nid, u) for u in users],
    )
    return nid


async def _statuses(conn: Any, nid: uuid.UUID) -> set[str]:
    return {r["status"] for r in await conn.fetch("SELECT status FROM deliveries WHERE notification_id = $1", nid)}


async def test_a_notification_committed_behind_the_expiry_cursor_is_expired_by_the_late_sweep(
    db: asyncpg.Pool,
) -> None:
    async with db.acquire() as conn:
        # As if its transaction began 90 s ago and committed after the first sweep had passed its expiry.
        late = await _notification(conn, ["ana"], created_ago_s=100, expired_ago_s=90)
        zero = uuid.UUID(int=0)
        await sql.set_cursor(conn, "expiry", await conn.fetchval("SELECT now() - interval '3 seconds'"), zero)
        await sql.set_cursor(conn, "expiry_late", await conn.fetchval("SELECT now() - interval '1 hour'"), zero)
        assert await sql.expire_due(conn, 100) == 1
        assert await _statuses(conn, late) == {"expired"}


async def test_the_expiry_cursor_moves_only_past_a_finished_window(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        nid = await _notification(conn, [f"u{i}" for i in range(5)], created_ago_s=20, expired_ago_s=10)
        before, _ = await sql.cursor(conn, "expiry")
        assert await sql.expire_due(conn, 3) == 3  # limit reached: the window is not done
        assert (await sql.cursor(conn, "expiry"))[0] == before
        assert await sql.expire_due(conn, 3) == 2
        assert (await sql.cursor(conn, "expiry"))[0] > before
        assert await _statuses(conn, nid) == {"expired"}
        assert await sql.expire_due(conn, 3) == 0


async def test_the_fresh_sweep_reads_each_notification_once(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        stale = uuid.uuid4()
        await conn.execute(
            "INSERT INTO notifications (id, event, payload, recipients, created_at, expires_at) "
            "VALUES ($1, 'e', '{}', 2, now() - interval '10 seconds', now() + interval '1 day')", stale,
        )
        await conn.execute(
            "INSERT INTO deliveries (notification_id, user_id, seq, status) VALUES ($1, 'bo', 1, 'pending'), "
            "($1, 'cy', 1, 'delivered')", stale,
        )
        await _notification(conn, ["di"], created_ago_s=0)
        start = await sql.fresh_cursor(conn)


        async def taken() -> sql.FreshPage | None:
            # A write transaction still running anywhere on the (shared) server holds the sweep below it.
            page = await sql.fresh_page(conn, start, stale_s=5, limit=100)
            return page if page.taken else None

        page = await wait_for(taken, timeout_s=20, interval_s=0.1)
        assert [(r["notification_id"], r["user_id"], r["status"]) for r in page.rows] == [(stale, "bo", "pending")]
        assert page.read == 2 and page.taken == 1  # the young one is not stale yet
        assert page.following is not None and page.following[1] == stale
        await sql.set_fresh_cursor(conn, *page.following)
        again = await sql.fresh_page(conn, page.following, stale_s=5, limit=100)
        assert (again.rows, again.taken, again.following) == ([], 0, None)
        # Touched: in the stale sweep's view from now on.
        assert await conn.fetchval(
            "SELECT next_attempt_at IS NOT NULL FROM deliveries WHERE notification_id = $1 AND user_id = 'bo'", stale
        )

