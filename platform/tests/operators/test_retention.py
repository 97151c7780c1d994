"""Retention keeps the record's time partitions: created ahead of need, dropped whole once all expired."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta

import asyncpg
import pytest
import pytest_asyncio

from notiflow.config import Settings
from notiflow.ids import id_at
from notiflow.service.retention import RetentionService
from notiflow.store import partitions
from notiflow.store.migrate import apply_migrations
from notiflow.store.pool import connect_pool

pytestmark = pytest.mark.timeout(60)


@pytest_asyncio.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await connect_pool(settings.database_url_required, max_size=2)
    try:
        yield p
    finally:
        await p.close()


async def day_partitions(conn: asyncpg.Connection) -> set[date]:
    return {p.day for p in await partitions.partitions(conn) if p.day is not None}


async def add(conn: asyncpg.Connection, day: date, *, expires_in_s: float, users: int = 2) -> uuid.UUID:
    """A notification made on ``day`` (its id says so), with deliveries, attempt rows and a DLQ row."""
    nid = id_at(partitions.day_start(day) + timedelta(hours=12))
    await conn.execute(
        "INSERT INTO notifications (id, event, payload, recipients, expires_at, era) "
        "VALUES ($1, 'e', '{}', $2, now() + $3 * interval '1 second', notiflow_era($1))", nid, users, expires_in_s,
    )
    for i in range(users):
        await conn.execute(
            "INSERT INTO deliveries (notification_id, user_id, seq, status, era) "
            "VALUES ($1, $2, $3, 'offline', notiflow_era($1))", nid, f"u{i}", int(nid.int % 10**12) + i,
        )
        await conn.execute(
            "INSERT INTO delivery_attempts (notification_id, user_id, channel, attempt, outcome, node_id, "
            "started_at, finished_at, era) VALUES ($1, $2, 'socket', 1, 'failed', 'n', now(), now(), notiflow_era($1))",
            nid, f"u{i}",
        )
    await conn.execute(
        "INSERT INTO dlq (notification_id, user_id, channel, reason, attempts) "
        "VALUES ($1, 'u0', 'socket', 'max_retries_exceeded', 3)", nid,
    )
    return nid


async def test_migrate_creates_partitions_ahead_and_a_round_creates_missing_ones(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        today = (await partitions.server_now(conn)).date()
        wanted = {today + timedelta(days=d) for d in range(-partitions.BEHIND_DAYS, partitions.AHEAD_DAYS + 1)}
        assert wanted <= await day_partitions(conn)
        last = max(wanted)
        for table in reversed(partitions.TABLES):
            await conn.execute(f"ALTER TABLE {table}_v7 DETACH PARTITION {table}_p{last:%Y%m%d}")
            await conn.execute(f"DROP TABLE {table}_p{last:%Y%m%d}")
        assert last not in await day_partitions(conn)
    done = await RetentionService(settings, pool).run_once()
    assert done["partitions_created"] == 1
    async with pool.acquire() as conn:
        assert wanted <= await day_partitions(conn)


async def test_a_day_goes_whole_once_over_and_all_expired_with_its_dlq_rows(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    s = settings.model_copy(update={"retention_days": 30})
    async with pool.acquire() as conn:
        today = (await partitions.server_now(conn)).date()
        old, skewed, recent = today - timedelta(days=40), today - timedelta(days=39), today - timedelta(days=20)
        for day in (old, skewed, recent):
            await partitions.ensure(conn, day, ahead=0, behind=0)
        gone = [await add(conn, old, expires_in_s=-3600) for _ in range(3)]
        # A day over for the retention period that still holds an unexpired notification (an id from a clock
        # far ahead, or an expiry set under a longer retention period) is kept until it expires.
        await add(conn, skewed, expires_in_s=-3600)
        kept_skewed = await add(conn, skewed, expires_in_s=3600)
        kept_recent = await add(conn, recent, expires_in_s=-3600)  # expired, but its day is not over yet
        todays = await add(conn, today, expires_in_s=3600)

    done = await RetentionService(s, pool).run_once()

    assert (done["partitions_dropped"], done["dlq"]) == (1, 3)
    async with pool.acquire() as conn:
        assert old not in await day_partitions(conn)
        assert {skewed, recent, today} <= await day_partitions(conn)
        for table in partitions.TABLES:
            assert await conn.fetchval("SELECT to_regclass($1)", f"{table}_p{old:%Y%m%d}") is None
        left = {r["notification_id"] for r in await conn.fetch("SELECT notification_id FROM dlq")}
        assert left.isdisjoint(gone) and {kept_skewed, kept_recent, todays} <= left
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE notification_id = $1", kept_skewed) == 2
        # Nothing left detached or pending.
        assert await partitions.finish_detaches(conn) == 0
    again = await RetentionService(s, pool).run_once()
    assert (again["partitions_dropped"], again["dlq"]) == (0, 0)


async def test_the_legacy_partition_goes_once_the_upgrade_is_a_retention_period_old(own_database: str) -> None:
    await apply_migrations(own_database, retention_days=30)
    s = Settings(database_url=own_database, retention_days=30)
    p = await connect_pool(own_database, max_size=2)
    try:
        async with p.acquire() as conn:
            legacy = uuid.uuid4()  # a random id: written as before the upgrade, into the legacy partition
            await conn.execute(
                "INSERT INTO notifications (id, event, payload, recipients, expires_at) "
                "VALUES ($1, 'e', '{}', 1, now() + interval '1 hour')", legacy,
            )
            await conn.execute(
                "INSERT INTO dlq (notification_id, user_id, channel, reason, attempts) "
                "VALUES ($1, 'u0', 'socket', 'max_retries_exceeded', 3)", legacy,
            )
            await conn.execute(
                "UPDATE schema_migrations SET applied_at = now() - interval '31 days' WHERE version = $1",
                partitions.MIGRATION,
            )
        assert (await RetentionService(s, p).run_once())["partitions_dropped"] == 0  # one row not expired yet
        async with p.acquire() as conn:
            await conn.execute("UPDATE notifications SET expires_at = now() - interval '1 second'")
        done = await RetentionService(s, p).run_once()
        assert (done["partitions_dropped"], done["dlq"]) == (1, 1)
        async with p.acquire() as conn:
            for table in partitions.TABLES:
                assert await conn.fetchval("SELECT to_regclass($1)", f"{table}_legacy") is None
            assert await conn.fetchval("SELECT count(*) FROM dlq") == 0
    finally:
        await p.close()


async def test_old_poison_entries_go_by_age(settings: Settings, pool: asyncpg.Pool) -> None:
    s = settings.model_copy(update={"retention_days": 1, "retention_batch": 1})
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO poison_entries (stream_id, fields, reason, failed_at) VALUES ('1-0', '{}', 'x', "
            "now() - interval '2 days'), ('2-0', '{}', 'x', now() - interval '3 days'), ('3-0', '{}', 'y', now())"
        )
    assert (await RetentionService(s, pool).run_once())["poison_entries"] == 2
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT array_agg(stream_id) FROM poison_entries") == ["3-0"]
