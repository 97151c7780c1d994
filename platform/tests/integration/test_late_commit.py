"""A commit that lands late, after the reconciler's fresh sweep has gone past its time (issue 24, window 1).

An ingest transaction fixes its notification's creation time when it begins; waiting behind another
transaction's lock on the user's seq counter, it may commit long after that. Meanwhile other users'
notifications commit and the fresh sweep moves on. If the late notification's stream entry is then lost
(failover to a lagging replica, a restore, XTRIM, eviction: the epoch key survives), the sweep must still
find it, or a connected user never gets it live (SPEC I2).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from helpers import wait_for
from integration_support import Gateways, SocketFactory, Workers, notify, users

from notiflow.config import Settings
from notiflow.models import NewNotification
from notiflow.service.reconciler import Reconciler
from notiflow.store import ingest as ingest_sql
from notiflow.store import reconcile as reconcile_sql
from notiflow.streams.work import WorkStream

pytestmark = pytest.mark.timeout(90)

#: Fresh work is looked at once it is this old (the reconciler's stuck_after_s), seconds.
STALE_S = 1.0


@pytest_asyncio.fixture
async def holder(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, for a transaction that holds a user's locks as a concurrent ingest
    would; whatever it still holds is rolled back at the end."""
    conn = await asyncpg.connect(settings.database_url_required)
    try:
        yield conn
    finally:
        await conn.close()


async def hold_user(conn: asyncpg.Connection, user_id: str) -> asyncpg.transaction.Transaction:
    """Begin an ingest for ``user_id`` with the store's own SQL and leave it open: it holds the user's seq
    counter, so any other ingest for that user waits until it ends."""
    tx = conn.transaction()
    await tx.start()
    item = NewNotification(
        id=uuid.uuid4(), user_ids=[user_id], event="holder", payload_json="{}", ttl_seconds=None, webhook_url=None
    )
    await ingest_sql.insert_notifications(conn, [item])
    return tx


async def waiting_on_a_lock(db: asyncpg.Pool) -> bool:
    return bool(await db.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ))


async def in_stream(rds: aioredis.Redis, settings: Settings, nid: str) -> bool:
    return any(nid in str(fields) for _id, fields in await rds.xrange(settings.stream_key))


async def test_a_late_commit_past_the_fresh_cursor_still_reaches_a_connected_user(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool,
    rds: aioredis.Redis, settings: Settings, holder: asyncpg.Connection,
) -> None:
    swept = settings.model_copy(update={"stuck_after_s": STALE_S})
    # The reconciler's rounds are run here, one at a time, at the points that matter.
    reconciler = Reconciler(settings=swept, pool=db, work=WorkStream(rds, swept))
    await reconciler.run_once()  # the first round: no epoch yet, "rebuilds" an empty namespace
    alice_gw = await gateways.start()
    other_gw = await gateways.start()  # a gateway's ingest commits one batch at a time: others go elsewhere
    alice, bob = users(2)
    sock = await socket(alice_gw, alice)

    held = await hold_user(holder, alice)
    late = asyncio.create_task(notify(http, alice_gw.url, [alice], payload={"late": True}))
    await wait_for(lambda: waiting_on_a_lock(db), timeout_s=15, message="alice's ingest waits for her lock")
    # Begun after alice's, committed before it.
    await notify(http, other_gw.url, [bob])
    committed = await db.fetchval("SELECT now()")
    await wait_for(
        lambda: db.fetchval("SELECT now() > $1::timestamptz + $2 * interval '1 second'", committed, STALE_S + 0.2),
        timeout_s=15, message="bob's notification is stale",
    )
    await reconciler.run_once()  # a round while alice's commit is still pending

    await held.rollback()
    nid = await asyncio.wait_for(late, timeout=15)
    assert not await waiting_on_a_lock(db)
    # Her entry reaches the stream and is lost there before any worker reads it.
    await wait_for(lambda: in_stream(rds, settings, nid), timeout_s=10, message="alice's entry XADDed")
    await rds.xtrim(settings.stream_key, maxlen=0)

    await workers.stream()
    await workers.retry(stuck_after_s=STALE_S)
    [frame] = await sock.wait_ids([nid], timeout_s=30)
    assert frame["payload"] == {"late": True}


async def test_a_commit_later_than_both_expiry_sweeps_is_still_expired(
    db: asyncpg.Pool, rds: aioredis.Redis, settings: Settings
) -> None:
    """Its transaction began 100 s ago with a TTL of 10 s, and it committed after both expiry sweeps (2 s and
    60 s behind now) had passed its expiry: a reconciler round still expires it. (A notification written
    straight into the record: a commit that late would make the test wait over a minute.)"""
    swept = settings.model_copy(update={"stuck_after_s": STALE_S})
    reconciler = Reconciler(settings=swept, pool=db, work=WorkStream(rds, swept))
    await reconciler.run_once()  # the first round: no epoch yet, "rebuilds" an empty namespace
    async with db.acquire() as conn:
        for name, _lag in reconcile_sql.EXPIRY_SWEEPS:
            at = await conn.fetchval("SELECT now() - interval '3 seconds'")
            await reconcile_sql.set_cursor(conn, name, at, uuid.UUID(int=0))
        late = uuid.uuid4()
        await conn.execute(
            "INSERT INTO notifications (id, event, payload, recipients, created_at, expires_at) "
            "VALUES ($1, 'e', '{}', 2, now() - interval '100 seconds', now() - interval '90 seconds')", late,
        )
        await conn.execute(
            "INSERT INTO deliveries (notification_id, user_id, seq, status) VALUES ($1, 'ed', 1, 'offline'), "
            "($1, 'flo', 1, 'dispatched')", late,
        )

    async def expired() -> bool:
        # Rounds until the sweep reaches it: a write transaction still running anywhere on the (shared) server
        # holds the fresh sweep below it until it ends.
        await reconciler.run_once()
        statuses = await db.fetch("SELECT status FROM deliveries WHERE notification_id = $1", late)
        return {r["status"] for r in statuses} == {"expired"}

    await wait_for(expired, timeout_s=30, interval_s=0.2, message="both deliveries expired")
