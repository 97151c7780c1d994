"""Idempotency keys in day partitions (migration 013, docs/record.md): a live (scope, key) stays unique across
partitions under concurrent claims, an aged row in another partition does not block a new claim, and retention
drops whole partitions once every key in them is past the window."""

from __future__ import annotations

import asyncio
import random
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from notiflow.config import Settings
from notiflow.ids import new_id
from notiflow.models import NewNotification
from notiflow.service.retention import RetentionService
from notiflow.store import ingest as sql
from notiflow.store import key_partitions, partitions
from notiflow.store.migrate import apply_migrations
from notiflow.store.pool import connect_pool

pytestmark = pytest.mark.timeout(60)

DAY_S = 86_400


def keyed(key: str, scope: str = "s") -> NewNotification:
    return NewNotification(
        new_id(), ["ann"], "e", "{}", None, None,
        idempotency_key=key, idempotency_scope=scope, request_hash=f"hash-{secrets.token_hex(4)}",
    )  # fmt: skip


async def claim(conn: asyncpg.Connection, items: list[NewNotification], window_s: int = DAY_S) -> sql.KeyClaim:
    return await sql.claim_idempotency_keys(conn, items, window_s)


async def until(check: Any, timeout_s: float = 20) -> None:
    """Poll ``check`` (a state of PostgreSQL, which notifies nobody) until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"{check.__name__} did not hold in {timeout_s} s"
        await asyncio.sleep(0.01)


ROW = (
    "INSERT INTO idempotency_keys (scope, key, request_hash, notification_id, response, created_at, day) "
    "VALUES ('s', $1, $2, $3, $4, $5, $6)"
)


async def test_a_claim_waits_for_a_concurrent_uncommitted_claim_of_the_same_key_and_then_loses(
    db: asyncpg.Pool,
) -> None:
    first, second = keyed("k-race"), keyed("k-race")
    async with db.acquire() as c1, db.acquire() as c2:
        t1 = c1.transaction()
        await t1.start()
        assert (await claim(c1, [first])).won == {("s", "k-race")}
        # Its row on today, and its guard on tomorrow, which a claim made tomorrow within the window meets.
        today = (await partitions.server_now(c1)).date()
        days = {
            r["day"] for r in await c1.fetch("SELECT day FROM idempotency_keys WHERE notification_id = $1", first.id)
        }
        assert days == {today, today + timedelta(days=1)}
        result = await racing_claim(db, c2, [second], t1)
    assert result.won == set()
    assert result.existing[("s", "k-race")][0] == first.request_hash
    assert await db.fetchval("SELECT count(DISTINCT notification_id) FROM idempotency_keys WHERE key = 'k-race'") == 1


async def racing_claim(db: asyncpg.Pool, conn: asyncpg.Connection, items: list[NewNotification], holder: Any) -> Any:
    """Claim ``items`` on ``conn`` while ``holder`` (a transaction) is open: the claim must wait for it; then
    commit the holder and return the claim's result."""
    pid = conn.get_server_pid()

    async def claim_in_transaction() -> sql.KeyClaim:
        async with conn.transaction():
            return await claim(conn, items)

    racer = asyncio.create_task(claim_in_transaction())

    async def waits_or_done() -> bool:
        state = await db.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
        return racer.done() or state == "Lock"

    await until(waits_or_done)
    assert not racer.done(), "the claim did not wait for the concurrent, uncommitted one"
    await holder.commit()
    return await racer


async def test_a_claim_of_yesterday_uncommitted_at_midnight_holds_off_a_claim_of_today(db: asyncpg.Pool) -> None:
    """The partition boundary: a claim whose transaction began yesterday wrote its row on yesterday and its guard
    on today, and has not committed; today's claim of the key meets the guard, waits, and loses."""
    second = keyed("k-midnight")
    async with db.acquire() as c1, db.acquire() as c2:
        today = (await partitions.server_now(c1)).date()
        t1 = c1.transaction()
        await t1.start()
        nid, late = new_id(), partitions.day_start(today) - timedelta(seconds=1)
        for day in (today - timedelta(days=1), today):
            await c1.execute(ROW, "k-midnight", "yesterday", nid, '{"id": "y"}', late, day)
        result = await racing_claim(db, c2, [second], t1)
    assert result.won == set()
    assert result.existing == {("s", "k-midnight"): ("yesterday", {"id": "y"})}


async def test_a_claim_that_wins_its_day_but_meets_a_live_guard_takes_its_rows_back(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        today = (await partitions.server_now(conn)).date()
        await conn.execute(
            ROW, "k-guarded", "other", new_id(), '{"id": "o"}', datetime.now(UTC), today + timedelta(days=1)
        )
        item = keyed("k-guarded")
        async with conn.transaction():
            result = await claim(conn, [item])
        assert result.won == set()
        assert result.existing == {("s", "k-guarded"): ("other", {"id": "o"})}
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE notification_id = $1", item.id) == 0


async def test_many_concurrent_batches_win_each_key_once_and_do_not_deadlock(db: asyncpg.Pool) -> None:
    names = [f"k-many-{i}" for i in range(6)]

    async def batch() -> set[tuple[str, str]]:
        items = [keyed(k) for k in random.sample(names, len(names))]
        async with db.acquire() as conn, conn.transaction():
            return (await claim(conn, items)).won

    results = await asyncio.gather(*(batch() for _ in range(4)))
    won = [k for r in results for k in r]
    assert sorted(won) == sorted(("s", k) for k in names)
    assert await db.fetchval(
        "SELECT count(DISTINCT notification_id) FROM idempotency_keys WHERE key LIKE 'k-many-%'"
    ) == len(names)


async def test_a_live_key_of_yesterday_holds_and_an_aged_one_is_taken_over(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        today = (await partitions.server_now(conn)).date()
        before_today = partitions.day_start(today) - timedelta(minutes=1)
        for key, hours in (("k-live", 0), ("k-aged", 25)):
            nid = new_id()
            for day in (today - timedelta(days=1), today):  # the claim's row and its guard
                await conn.execute(ROW, key, "old", nid, '{"id": "old"}', before_today - timedelta(hours=hours), day)
        async with conn.transaction():
            result = await claim(conn, [keyed("k-live"), keyed("k-aged")])
        assert result.won == {("s", "k-aged")}
        assert result.existing == {("s", "k-live"): ("old", {"id": "old"})}
        async with conn.transaction():
            again = await claim(conn, [keyed("k-aged")])
        assert again.won == set() and again.existing[("s", "k-aged")][0] != "old"


async def test_retention_drops_key_partitions_once_every_key_in_them_is_past_the_window(own_database: str) -> None:
    await apply_migrations(own_database)
    p = await connect_pool(own_database, max_size=2)
    try:
        async with p.acquire() as conn:
            today = (await partitions.server_now(conn)).date()
            old = [today - timedelta(days=d) for d in (6, 5, 4, 3, 2)]
            await key_partitions.ensure(conn, today - timedelta(days=4), behind=2)
            for day in old:
                await conn.execute(ROW, "k-old", "h", new_id(), "{}", partitions.day_start(day), day)
            async with conn.transaction():
                assert (await claim(conn, [keyed("k-today")])).won == {("s", "k-today")}
        done = await RetentionService(Settings(database_url=own_database), p).run_once()
        assert done["key_partitions_dropped"] == len(old) + 1  # and the (empty) legacy partition
        async with p.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'k-old'") == 0
            left = {k.name for k in await key_partitions.partitions(conn)}
            assert {f"idempotency_keys_p{today + timedelta(days=d):%Y%m%d}" for d in (-1, 0, 1)} <= left
            assert not left & {f"idempotency_keys_p{d:%Y%m%d}" for d in old} and key_partitions.LEGACY not in left
            async with conn.transaction():
                assert (await claim(conn, [keyed("k-today")])).won == set()  # today's key still holds
    finally:
        await p.close()
