"""Recovery without losing anything, in process on real Redis and PostgreSQL: a crash between the commit
and the XADD (the outbox), stream entries lost after the XADD (the stuck-work sweep), and Redis losing
its data under running workers (NOGROUP, the epoch rebuild), on the shared server and by a real restart."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from faults import Faulty
from helpers import wait_for
from integration_support import (
    Gateways,
    SocketFactory,
    Workers,
    notify,
    offline_ids,
    settled,
    status_of,
    users,
    wipe_namespace,
)

from notiflow.config import Settings
from notiflow.devstack import EmbeddedRedis
from notiflow.models import NewNotification
from notiflow.service.ports import Wrappers
from notiflow.store import ingest as ingest_sql
from notiflow.streams.keys import GROUP

pytestmark = pytest.mark.timeout(60)


async def commit_without_xadd(db: asyncpg.Pool, user_ids: list[str], *, enqueued: bool = False) -> str:
    """What a gateway that dies right after its commit leaves behind: the notification and its deliveries
    in PostgreSQL, nothing in Redis. With ``enqueued`` its commit's outbox row is gone, as after its XADD (the
    entry was then lost with Redis's data). Uses the store's own ingest SQL."""
    item = NewNotification(
        id=uuid.uuid4(), user_ids=user_ids, event="crash.window", payload_json='{"lost": false}',
        ttl_seconds=None, webhook_url=None,
    )  # fmt: skip
    async with db.acquire() as conn, conn.transaction():
        outbox_id = await ingest_sql.insert_notifications(conn, [item])
        if enqueued:
            await conn.execute("DELETE FROM ingest_outbox WHERE id = $1", outbox_id)
    return str(item.id)


async def outbox_cleared(db: asyncpg.Pool, nids: list[str]) -> bool:
    """No outbox row names any of these notifications: their commits are wholly on the stream."""
    query = "SELECT NOT EXISTS (SELECT 1 FROM ingest_outbox WHERE notification_ids && $1::uuid[])"
    return bool(await db.fetchval(query, [uuid.UUID(n) for n in nids]))


async def test_a_commit_whose_xadd_failed_keeps_its_outbox_row_and_one_that_succeeded_loses_it(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """The gateway XADDs whole commits and deletes a commit's outbox row only once its XADD answered; no
    reconciler runs here, so a row that stays is the gateway's doing."""
    kept_user, gone_user = users(2)
    work = Faulty()
    work.fail("add", ConnectionError("injected: Redis away for this XADD"),
              when=lambda entries: any(kept_user in e.user_ids for e in entries))
    gw = await gateways.start(wrappers=Wrappers(work=work.around))
    kept = await notify(http, gw.url, [kept_user])
    # Its XADD has failed before the next commit is made: the two never share a pipeline.
    await wait_for(lambda: work.calls["add"] >= 1, timeout_s=5, message="the failed XADD")
    gone = await notify(http, gw.url, [gone_user])
    await wait_for(lambda: outbox_cleared(db, [gone]), timeout_s=5, message="the XADDed commit's row deleted")
    assert work.calls["add"] == 2
    assert not await outbox_cleared(db, [kept])


async def test_crash_between_commit_and_xadd_is_recovered_by_the_outbox(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool,
    rds: aioredis.Redis, settings: Settings,
) -> None:
    gw = await gateways.start()
    await workers.stream()
    await workers.retry()  # runs the reconciler
    # Its first round finds no epoch and rebuilds everything; the outbox is what matters after that.
    await wait_for(lambda: rds.exists(settings.key("epoch")), timeout_s=5, message="first reconciler round")
    online, away = users(2)
    sock = await socket(gw, online)
    nid = await commit_without_xadd(db, [online, away])
    assert await rds.xlen(settings.stream_key) == 0
    assert await status_of(db, nid, online) == "pending"

    # After outbox_grace_s (1 s here) the reconciler enqueues it, and deletes its commit's outbox row.
    [frame] = await sock.wait_ids([nid], timeout_s=15)
    assert frame["payload"] == {"lost": False} and frame["seq"] == 1
    assert await settled(db, nid) == {online: "dispatched", away: "offline"}

    await wait_for(lambda: outbox_cleared(db, [nid]), timeout_s=5, message="outbox row deleted")
    assert await offline_ids(http, gw.url, away) == [nid]
    # Enqueued once: no duplicate frame follows.
    assert await sock.quiet(0.5) == []


async def test_stream_entries_lost_after_xadd_are_recovered_by_the_stuck_sweep(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool, rds: aioredis.Redis,
    settings: Settings,
) -> None:
    gw = await gateways.start()
    await workers.retry(stuck_after_s=1)
    # Its first round finds no epoch and rebuilds everything; the stuck sweep is what matters after that.
    await wait_for(lambda: rds.exists(settings.key("epoch")), timeout_s=5, message="first reconciler round")
    [rosa] = users(1)
    ids = [await notify(http, gw.url, [rosa], payload={"i": i}) for i in range(3)]

    async def enqueued() -> bool:
        return await outbox_cleared(db, ids) and await rds.xlen(settings.stream_key) == 3

    await wait_for(enqueued, timeout_s=5)
    await rds.xtrim(settings.stream_key, maxlen=0)  # the entries vanish after the outbox rows were deleted
    await workers.stream()

    for nid in ids:
        assert await settled(db, nid, timeout_s=15) == {rosa: "offline"}
    assert await offline_ids(http, gw.url, rosa) == ids


async def test_work_lost_again_after_the_sweep_put_it_back_is_put_back_again(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool, rds: aioredis.Redis,
    settings: Settings,
) -> None:
    """Fresh work is looked at once (the fresh cursor passes it); what the sweep put back carries a due time,
    and the stale sweep finds it again when its entries are lost a second time (migration 006)."""
    gw = await gateways.start()
    await workers.retry(stuck_after_s=1)
    await wait_for(lambda: rds.exists(settings.key("epoch")), timeout_s=5, message="first reconciler round")
    [ines] = users(1)
    ids = [await notify(http, gw.url, [ines], payload={"i": i}) for i in range(2)]

    async def in_stream() -> bool:
        return bool(await rds.xlen(settings.stream_key) == 2)

    async def put_back() -> bool:
        due = await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE user_id = $1 AND next_attempt_at IS NOT NULL", ines
        )
        return bool(due == 2 and await rds.xlen(settings.stream_key) == 2)

    await wait_for(in_stream, timeout_s=5, message="first XADD")
    await rds.xtrim(settings.stream_key, maxlen=0)
    await wait_for(put_back, timeout_s=10, message="put back by the fresh sweep")
    await rds.xtrim(settings.stream_key, maxlen=0)  # lost again: the fresh cursor is past them now
    await wait_for(in_stream, timeout_s=10, message="put back by the stale sweep")
    await workers.stream()
    for nid in ids:
        assert await settled(db, nid, timeout_s=15) == {ines: "offline"}
    assert await offline_ids(http, gw.url, ines) == ids
    # Handed off: out of the stale sweep's view.
    assert await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE user_id = $1 AND next_attempt_at IS NOT NULL", ines
    ) == 0


async def test_redis_losing_its_data_under_running_workers(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool,
    rds: aioredis.Redis, settings: Settings,
) -> None:
    """The stream, its consumer group, the epoch, presence: all gone at once while a stream worker is
    blocked reading. The worker recreates the group (NOGROUP), the reconciler rebuilds the work that was
    in the stream from PostgreSQL, and the gateway re-asserts its users' presence."""
    gw = await gateways.start()
    sw = await workers.stream()
    sam, tess = users(2)
    sock = await socket(gw, sam)
    before = await notify(http, gw.url, [tess])
    assert await settled(db, before) == {tess: "offline"}

    in_flight = await commit_without_xadd(db, [tess], enqueued=True)  # in the stream when Redis loses it
    await asyncio.sleep(0.3)  # the worker is now blocked in XREADGROUP
    assert await wipe_namespace(rds, settings) >= 1
    after = await notify(http, gw.url, [tess])

    # No reconciler runs yet: the stream worker alone must notice the lost group and recreate it.
    assert await settled(db, after, timeout_s=15) == {tess: "offline"}
    sw.check()
    groups = await rds.xinfo_groups(settings.stream_key)
    assert [g["name"] for g in groups] == [GROUP]
    assert await status_of(db, in_flight, tess) == "pending"

    # The reconciler finds the epoch gone and rebuilds the lost work (stuck_after_s is 120 here).
    await workers.retry()
    assert await settled(db, in_flight, timeout_s=15) == {tess: "offline"}
    assert await offline_ids(http, gw.url, tess) == [before, in_flight, after]
    sw.check()

    # Presence comes back with the node's next heartbeat; live delivery resumes.
    await wait_for(lambda: rds.exists(settings.key("node", gw.node_id, "alive")), timeout_s=5)
    live = await notify(http, gw.url, [sam])
    await sock.wait_ids([live], timeout_s=10)
    assert await settled(db, live) == {sam: "dispatched"}


@pytest.mark.timeout(90)
async def test_redis_restart_without_persistence(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool,
    settings: Settings, tmp_path: Path,
) -> None:
    """A real Redis process (this test's own) killed and restarted empty on the same port: connections
    break, every key is gone. Nothing accepted is lost, and the whole path works again afterwards."""
    with EmbeddedRedis(workdir=tmp_path) as own:
        gw = await gateways.start(redis_url=own.url)
        sw = await workers.stream(redis_url=own.url)
        rw = await workers.retry(redis_url=own.url)
        uma, vic = users(2)
        sock = await socket(gw, uma)
        first = await notify(http, gw.url, [uma, vic])
        await sock.wait_ids([first])
        assert await settled(db, first) == {uma: "dispatched", vic: "offline"}

        in_flight = await commit_without_xadd(db, [vic], enqueued=True)
        await asyncio.to_thread(own.restart)
        # Accepted while the consumers are still reconnecting: PostgreSQL takes it; Redis gets it after.
        during = await notify(http, gw.url, [vic])

        for nid in (in_flight, during):
            assert await settled(db, nid, timeout_s=30) == {vic: "offline"}
        sw.check()
        rw.check()
        assert await offline_ids(http, gw.url, vic) == [first, in_flight, during]

        check = aioredis.from_url(own.url, decode_responses=True)
        try:
            await wait_for(lambda: check.exists(settings.key("node", gw.node_id, "alive")), timeout_s=10)
        finally:
            await check.aclose()
        live = await notify(http, gw.url, [uma])
        await sock.wait_ids([live], timeout_s=15)
        assert await settled(db, live) == {uma: "dispatched"}
        await workers.stop_all()
        await gateways.stop_all()
