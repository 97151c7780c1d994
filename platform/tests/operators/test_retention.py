"""Retention removes finished work older than the period, in bounded batches, and nothing open."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from notiflow.config import Settings
from notiflow.service.retention import RetentionService
from notiflow.store.pool import connect_pool

pytestmark = pytest.mark.timeout(60)

_seq = itertools.count(1)


@pytest_asyncio.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await connect_pool(settings.database_url_required, max_size=2)
    try:
        yield p
    finally:
        await p.close()


async def add(
    conn: asyncpg.Connection, *, age_days: float, deliveries: list[tuple[str, str | None]],
    ttl_passed: bool | None = None, attempts: int = 2,
) -> uuid.UUID:
    """A notification ``age_days`` old with deliveries (socket status, webhook status), each with attempts."""
    nid = uuid.uuid4()
    expires = {None: "NULL", True: "now() - interval '1 hour'", False: "now() + interval '1 day'"}[ttl_passed]
    await conn.execute(
        f"INSERT INTO notifications (id, event, payload, recipients, created_at, enqueued, expires_at) "
        f"VALUES ($1, 'e', '{{}}', $2, now() - $3 * interval '1 day', true, {expires})",
        nid, len(deliveries), age_days,
    )
    for i, (status, hook) in enumerate(deliveries):
        user = f"u{i}"
        await conn.execute(
            "INSERT INTO deliveries (notification_id, user_id, seq, status, webhook_status, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, now() - $6 * interval '1 day')",
            nid, user, next(_seq), status, hook, age_days,
        )
        for a in range(attempts):
            await conn.execute(
                "INSERT INTO delivery_attempts (notification_id, user_id, channel, attempt, outcome, node_id, "
                "started_at, finished_at) VALUES ($1, $2, 'socket', $3, 'failed', 'n', now(), now())",
                nid, user, a + 1,
            )
    return nid


async def dlq_row(
    conn: asyncpg.Connection, nid: uuid.UUID, user: str, channel: str, replayed_days: float | None
) -> int:
    replayed = "NULL" if replayed_days is None else f"now() - {replayed_days} * interval '1 day'"
    return int(await conn.fetchval(
        f"INSERT INTO dlq (notification_id, user_id, channel, reason, attempts, replayed_at) "
        f"VALUES ($1, $2, $3, 'max_retries_exceeded', 3, {replayed}) RETURNING id", nid, user, channel,
    ))


async def statuses(conn: asyncpg.Connection, nid: uuid.UUID) -> list[str] | None:
    """The notification's delivery statuses (sorted), or None when the notification is gone."""
    if not await conn.fetchval("SELECT 1 FROM notifications WHERE id = $1", nid):
        return None
    rows = await conn.fetch("SELECT status FROM deliveries WHERE notification_id = $1 ORDER BY user_id", nid)
    return [r["status"] for r in rows]


async def test_removes_finished_old_work_and_keeps_what_is_open(settings: Settings, pool: asyncpg.Pool) -> None:
    s = settings.model_copy(update={"retention_days": 1, "retention_batch": 2})
    async with pool.acquire() as conn:
        done = [await add(conn, age_days=2, deliveries=[("delivered", None)]) for _ in range(5)]
        expired = await add(conn, age_days=2, deliveries=[("expired", "expired")])
        mixed = await add(conn, age_days=2, deliveries=[("delivered", None), ("offline", None)])
        webhook_done = await add(conn, age_days=2, deliveries=[("delivered", "succeeded"), ("delivered", "dead")])
        # Dead socket deliveries stay in the user's offline queue (SPEC §4) until their TTL passes.
        dead_no_ttl = await add(conn, age_days=2, deliveries=[("dead", None)])
        dead_ttl_passed = await add(conn, age_days=2, deliveries=[("dead", None)], ttl_passed=True)
        open_ttl_ahead = await add(conn, age_days=2, deliveries=[("dispatched", None)], ttl_passed=False)
        retrying = await add(conn, age_days=2, deliveries=[("delivered", "retrying")])
        recent = await add(conn, age_days=0.5, deliveries=[("delivered", None)])
        # A DLQ entry waiting for an operator keeps its delivery replayable.
        waiting = await add(conn, age_days=2, deliveries=[("delivered", "dead")])
        await dlq_row(conn, waiting, "u0", "webhook", replayed_days=None)
        old_replayed = await dlq_row(conn, dead_ttl_passed, "u0", "socket", replayed_days=2)
        new_replayed = await dlq_row(conn, recent, "u0", "socket", replayed_days=0.1)
        await conn.execute("INSERT INTO poison_entries (stream_id, fields, reason, failed_at) "
                           "VALUES ('1-0', '{}', 'x', now() - interval '2 days'), ('2-0', '{}', 'y', now())")

    removed = await RetentionService(s, pool).run_once()

    async with pool.acquire() as conn:
        for nid in [*done, expired, webhook_done, dead_ttl_passed]:
            assert await statuses(conn, nid) is None, nid
        assert await statuses(conn, mixed) == ["offline"]
        assert await statuses(conn, dead_no_ttl) == ["dead"]
        assert await statuses(conn, open_ttl_ahead) == ["dispatched"]
        assert await statuses(conn, retrying) == ["delivered"]
        assert await statuses(conn, recent) == ["delivered"]
        assert await statuses(conn, waiting) == ["delivered"]
        left = {r["id"] for r in await conn.fetch("SELECT id FROM dlq")}
        assert old_replayed not in left and new_replayed in left and len(left) == 2
        # Attempt rows went with their deliveries and only with them.
        orphans = await conn.fetchval(
            "SELECT count(*) FROM delivery_attempts a WHERE NOT EXISTS (SELECT 1 FROM deliveries d "
            "WHERE d.notification_id = a.notification_id AND d.user_id = a.user_id)")
        assert orphans == 0
        assert await conn.fetchval("SELECT count(*) FROM delivery_attempts") == 2 * 6
        assert await conn.fetchval("SELECT count(*) FROM poison_entries") == 1
    # 5 + 1 + 1 (of mixed) + 2 + 1 deliveries, in batches of 2; 5 + 1 + 1 + 1 notifications.
    assert removed == {"deliveries": 10, "delivery_attempts": 20, "notifications": 8, "dlq": 1, "poison_entries": 1}
    assert await RetentionService(s, pool).run_once() == dict.fromkeys(removed, 0)


async def test_a_notification_whose_last_open_delivery_finishes_goes_next_round(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    s = settings.model_copy(update={"retention_days": 1})
    async with pool.acquire() as conn:
        nid = await add(conn, age_days=3, deliveries=[("delivered", None), ("offline", None)])
    await RetentionService(s, pool).run_once()
    async with pool.acquire() as conn:
        assert await statuses(conn, nid) == ["offline"]
        # Acknowledged now: it is finished, but its last change is recent, so it stays a retention period.
        await conn.execute("UPDATE deliveries SET status = 'delivered', updated_at = now() WHERE notification_id = $1",
                           nid)
    await RetentionService(s, pool).run_once()
    async with pool.acquire() as conn:
        assert await statuses(conn, nid) == ["delivered"]
        await conn.execute("UPDATE deliveries SET updated_at = now() - interval '2 days' WHERE notification_id = $1",
                           nid)
    await RetentionService(s, pool).run_once()
    async with pool.acquire() as conn:
        assert await statuses(conn, nid) is None
