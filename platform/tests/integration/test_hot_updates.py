"""The socket channel's hot path rewrites a delivery in place (migration 006): hand-offs and acks are HOT
updates, which PostgreSQL makes only when no indexed column changes (key or partial-index predicate). Before
006, `status` was in two partial indexes' predicates: every ack and hand-off wrote a new row version and its
index entries (side_by_side's paced fan-out: 34 -> 25 us of PostgreSQL CPU per delivery without them).

Counted with pg_stat_get_xact_tuples_(hot_)updated: the backend's counts not yet reported, so differences.
A row is updated HOT only if its page has room for the new version: fillfactor 50 leaves room for one new
version of every row of a page within one transaction (an ack batch that covers the page), the versions of
earlier transactions being pruned once no snapshot sees them (at 80, 23 of these 40 acks were HOT; before 006, none)."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest
from helpers import wait_for
from integration_support import insert_pending

from notiflow.store import deliveries as delivery_sql
from notiflow.store import queries as query_sql

pytestmark = pytest.mark.timeout(30)

USERS = [f"hot-{i}" for i in range(40)]


class _Updates:
    """Updates of deliveries (all, HOT) made through one connection since the last call."""

    def __init__(self, conn: Any, nid: Any) -> None:
        self._conn = conn
        self._nid = nid
        self._last = (0, 0)

    async def since(self) -> tuple[int, int]:
        # The counts are the partition's (migration 009): the one that holds the notification's deliveries.
        row = await self._conn.fetchrow(
            "SELECT pg_stat_get_xact_tuples_updated(p) AS n, pg_stat_get_xact_tuples_hot_updated(p) AS hot "
            "FROM (SELECT tableoid AS p FROM deliveries WHERE notification_id = $1 LIMIT 1) AS t", self._nid
        )
        now = (row["n"], row["hot"])
        diff, self._last = (now[0] - self._last[0], now[1] - self._last[1]), now
        return diff


async def test_no_index_of_deliveries_follows_the_socket_state(db: asyncpg.Pool) -> None:
    # Every partition's indexes (migration 009), the legacy one's included.
    defs = [r["indexdef"] for r in await db.fetch("SELECT indexdef FROM pg_indexes WHERE tablename ~ '^deliveries'")]
    assert defs
    assert [d for d in defs if re.search(r"(?<!webhook_)\bstatus\b", d)] == []
    assert [d for d in defs if re.search(r"\b(delivered_at|updated_at)\b", d)] == []


async def _nobody_sees(conn: Any, xid: str) -> bool:
    """No other session of this database holds a snapshot (backend_xmin) at or before transaction ``xid``."""
    return bool(await conn.fetchval(
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL "
        "AND backend_xmin::text::bigint <= $1::bigint % 4294967296",
        int(xid),
    ))


async def test_hand_offs_and_acks_are_hot_updates(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        nid = await insert_pending(conn, USERS)
        updates = _Updates(conn, nid)
        await updates.since()
        # Each in its own transaction, as on the hot path: a row version is pruned (its space reused on the
        # page) once no transaction can see it any more.
        async with conn.transaction():
            await delivery_sql.record_handoffs(conn, [(nid, u, "dispatched") for u in USERS[:20]])
            assert await updates.since() == (20, 20)
            handoff_xid = await conn.fetchval("SELECT pg_current_xact_id()::text")
        # The hand-offs' old row versions can be pruned (their room reused) only once no snapshot of this
        # database can still see them: another session's transaction begun before the hand-offs committed (the
        # suite's database is shared by its tests' processes) holds them, and the acks would then not all fit.
        await wait_for(
            lambda: _nobody_sees(conn, handoff_xid),
            timeout_s=20, message="no other snapshot of this database began before the hand-offs committed",
        )
        async with conn.transaction():
            # Acks of dispatched and of still pending deliveries alike.
            assert await query_sql.ack_pairs(conn, [(u, str(nid)) for u in USERS]) == len(USERS)
            total, hot = await updates.since()
            # Inserts fill a page to just past half: the last rows of a page may not find room (35 of 40 HOT on
            # the day partitions of migration 009, whose rows carry `era`; 36-40 before; 0 before 006).
            assert total == len(USERS) and hot >= 0.8 * total, (total, hot)
        rows = await conn.fetch("SELECT status FROM deliveries WHERE notification_id = $1", nid)
        states = {r["status"] for r in rows}
        assert states == {"delivered"}


async def test_an_ack_of_a_put_back_delivery_takes_it_out_of_the_stale_sweeps_view(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        nid = await insert_pending(conn, USERS[:3])
        await conn.execute("UPDATE deliveries SET next_attempt_at = now() WHERE notification_id = $1", nid)
        assert await query_sql.ack_ids(conn, USERS[0], [nid]) == 1
        due = await conn.fetch(
            "SELECT user_id FROM deliveries WHERE notification_id = $1 AND next_attempt_at IS NOT NULL ORDER BY 1", nid
        )
        assert [r["user_id"] for r in due] == sorted(USERS[1:3])
