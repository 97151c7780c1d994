"""Ingest's insert writes what it must and no more (migration 007): no foreign key checked row by row on
deliveries, and the per-user seq counters rewritten in place (HOT) commit after commit.

Counted with pg_stat_get_xact_tuples_(hot_)updated, as in test_hot_updates.py."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from notiflow.models import NewNotification
from notiflow.store import ingest as ingest_sql

pytestmark = pytest.mark.timeout(60)

# Enough users to fill several user_seqs pages: a page with room left takes a HOT update whatever its fillfactor.
USERS = [f"lean-{i}" for i in range(1500)]


async def test_deliveries_have_no_foreign_key_to_check_per_row(db: asyncpg.Pool) -> None:
    kinds = await db.fetch(
        "SELECT contype::text AS contype FROM pg_constraint WHERE conrelid = 'deliveries_v7'::regclass"
    )
    assert "p" in {r["contype"] for r in kinds}
    assert "f" not in {r["contype"] for r in kinds}


async def _updates(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT pg_stat_get_xact_tuples_updated('user_seqs'::regclass) AS n, "
        "pg_stat_get_xact_tuples_hot_updated('user_seqs'::regclass) AS hot"
    )
    return row["n"], row["hot"]


async def test_seq_counters_are_bumped_in_place(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        # The counters' rows, committed: packed into their pages as inserts pack them.
        await ingest_sql.insert_notifications(conn, [NewNotification(uuid.uuid4(), USERS, "e", "{}", None, None)])
        # One transaction (its counts are exact): the next commit's bump of every counter, as ingest makes it.
        async with conn.transaction():
            before = await _updates(conn)
            item = NewNotification(uuid.uuid4(), USERS, "e", "{}", None, None)
            await ingest_sql.insert_notifications(conn, [item])
            after = await _updates(conn)
        assert item.seqs == [2] * len(USERS)
        total, hot = after[0] - before[0], after[1] - before[1]
        # At fillfactor 100 no page had room: 0 of 1,500 were HOT.
        assert total == len(USERS) and hot >= 0.95 * total, (total, hot)


async def test_a_batch_numbers_each_users_deliveries_in_batch_order_below_its_counter(db: asyncpg.Pool) -> None:
    """The caller computes each delivery's offset below its user's new counter (no window in the SQL): users
    that recur across a batch's notifications get consecutive seqs in batch order, as stored and as returned."""
    ann, bob, cat = (f"order-{uuid.uuid4().hex[:8]}-{n}" for n in ("ann", "bob", "cat"))
    async with db.acquire() as conn:
        first = NewNotification(uuid.uuid4(), [ann], "e", "{}", None, None)
        await ingest_sql.insert_notifications(conn, [first])  # ann's counter is 1 before the batch
        batch = [
            NewNotification(uuid.uuid4(), [ann, bob], "e", "{}", None, None),
            NewNotification(uuid.uuid4(), [cat], "e", "{}", None, None),
            NewNotification(uuid.uuid4(), [bob, cat, ann], "e", "{}", None, None),
            NewNotification(uuid.uuid4(), [ann], "e", "{}", None, None),
        ]
        await ingest_sql.insert_notifications(conn, batch)
        rows = await conn.fetch(
            "SELECT notification_id, user_id, seq FROM deliveries WHERE notification_id = ANY($1::uuid[])",
            [i.id for i in batch],
        )
    assert first.seqs == [1]
    assert [i.seqs for i in batch] == [[2, 1], [1], [2, 2, 3], [4]]
    stored = {(r["notification_id"], r["user_id"]): r["seq"] for r in rows}
    returned = {(i.id, u): s for i in batch for u, s in zip(i.user_ids, i.seqs or [], strict=True)}
    assert stored == returned
