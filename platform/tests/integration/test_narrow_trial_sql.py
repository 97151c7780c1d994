"""The statements loadtests/narrow_trial.py measures do what its figures claim (docs/perf/2026-12-08.md): acks in
order move a user's cursor, an ack past an unacknowledged seq leaves it listed (kept as a hole, or the ack kept
apart), a hole is filled by its ack, and each offline page lists exactly the unacknowledged entries, in seq
order. A trial's SQL, not the store's: wrong statements would have measured the wrong record."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from loadtests import narrow_sql
from notiflow.ids import new_id
from notiflow.models import NewNotification
from notiflow.store import ingest as ingest_sql
from notiflow.store.migrate import apply_migrations

pytestmark = pytest.mark.timeout(60)


async def entries_of_ann(own_database: str, table: str) -> tuple[asyncpg.Connection, dict[int, Any]]:
    """Five notifications to ann (seqs 1-5) in ``table``; the connection and the ids by seq."""
    await apply_migrations(own_database)
    conn = await asyncpg.connect(own_database)
    await conn.execute(narrow_sql.SCHEMA)
    items = [NewNotification(new_id(), ["ann"], "e", "{}", None, None) for _ in range(5)]
    await ingest_sql.insert_notifications(conn, items)
    await conn.execute(f"INSERT INTO {table} SELECT notification_id, user_id, seq FROM deliveries")
    return conn, {item.seqs[0]: item.id for item in items if item.seqs}


async def ack(conn: asyncpg.Connection, statement: str, seqs: list[int]) -> None:
    await conn.fetchval(statement, ["ann"] * len(seqs), seqs)


async def listed(conn: asyncpg.Connection, kind: str) -> list[int]:
    table, _, page = narrow_sql.NARROW[kind]
    return [r["seq"] for r in await conn.fetch(page.format(table=table), "ann", 0, 100)]


async def test_holes_keep_the_unacknowledged_seqs_below_the_cursor(own_database: str) -> None:
    conn, ids = await entries_of_ann(own_database, "entries_holes")
    try:
        assert sorted(ids) == [1, 2, 3, 4, 5]
        await ack(conn, narrow_sql.ACK_HOLES, [1, 2])
        assert await conn.fetchval("SELECT count(*) FROM ack_holes") == 0  # in order: no hole
        await ack(conn, narrow_sql.ACK_HOLES, [4])
        assert await conn.fetchval("SELECT upto FROM holes_cursors WHERE user_id = 'ann'") == 4
        assert await listed(conn, "holes") == [3, 5]
        await ack(conn, narrow_sql.ACK_HOLES, [3])
        assert await listed(conn, "holes") == [5]
        await ack(conn, narrow_sql.ACK_HOLES, [5, 1])  # an ack again: nothing comes back
        assert await listed(conn, "holes") == []
        assert await conn.fetchval("SELECT count(*) FROM ack_holes") == 0
    finally:
        await conn.close()


@pytest.mark.parametrize("kind", ["narrow", "narrow-upd"])
async def test_acks_apart_wait_above_a_cursor_that_waits_for_the_oldest_open_seq(
    own_database: str, kind: str
) -> None:
    conn, _ = await entries_of_ann(own_database, "entries")
    statement = narrow_sql.NARROW[kind][1]
    try:
        await ack(conn, statement, [1, 2])
        await ack(conn, statement, [4])
        assert await conn.fetchval("SELECT upto FROM ack_cursors WHERE user_id = 'ann'") == 2
        assert await conn.fetchval("SELECT array_agg(seq) FROM acks_apart") == [4]
        assert await listed(conn, kind) == [3, 5]
    finally:
        await conn.close()


async def test_acks_by_id_find_their_seqs_past_the_cursor(own_database: str) -> None:
    conn, ids = await entries_of_ann(own_database, "entries_byid")
    try:
        await conn.fetchval(narrow_sql.ACK_BY_ID, ["ann", "ann"], [ids[1], ids[2]])
        await conn.fetchval(narrow_sql.ACK_BY_ID, ["ann"], [ids[5]])
        assert await conn.fetchval("SELECT upto FROM ack_cursors WHERE user_id = 'ann'") == 2
        assert await listed(conn, "byid") == [3, 4]
    finally:
        await conn.close()
