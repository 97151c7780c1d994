"""A store hiccup never takes a notification out of its user's offline queue (SPEC §4, issue 7).

- A socket delivery whose retries run out because Redis failed during presence is ``dead`` with a DLQ row
  for operators, and still listed in the user's offline queue until the user acknowledges it.
- Stream entries held through a PostgreSQL outage are not poison: the worker keeps them and processes them
  again in place, instead of leaving them to be reclaimed (each reclaim counted towards
  ``POISON_MAX_DELIVERIES``, so a long enough outage parked healthy entries as poison).

The faults are wrappers (tests/fakes.py) around the processes' own adapters, handed in through ``wrappers=``.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest
from faults import Faulty, FaultyRecord
from helpers import wait_for
from integration_support import Gateways, Workers, notify, offline_ids, status_of, users

from notiflow.errors import StoreUnavailable
from notiflow.service.enqueue import CARRY_PAYLOAD_MAX
from notiflow.service.ports import Wrappers

pytestmark = pytest.mark.timeout(90)


async def test_a_socket_delivery_dead_through_a_redis_outage_stays_in_the_offline_queue(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    presence = Faulty()
    presence.fail("live_nodes", StoreUnavailable("redis: presence: injected outage"))
    # The first failed attempt is the last one.
    sw = await workers.stream(max_retries=0, wrappers=Wrappers(presence=presence.around))
    [alice] = users(1)
    kept = await notify(http, gw.url, [alice], payload={"n": 1})

    async def dead() -> bool:
        return await status_of(db, kept, alice) == "dead"

    await wait_for(dead, timeout_s=15, message="the delivery dead-lettered")
    dlq = await db.fetch("SELECT channel, reason FROM dlq WHERE notification_id = $1", uuid.UUID(kept))
    assert [(r["channel"], r["reason"]) for r in dlq] == [("socket", "max_retries_exceeded")]
    assert await offline_ids(http, gw.url, alice) == [kept], "a dead socket delivery left its user's queue"

    ack = await http.post(f"{gw.url}/notifications/offline/{alice}/ack", json={"ids": [kept]})
    assert ack.status_code == 200 and ack.json() == {"acknowledged": 1}, ack.text
    assert await offline_ids(http, gw.url, alice) == []
    assert await status_of(db, kept, alice) == "delivered"
    sw.check()


async def test_entries_held_through_a_postgres_outage_are_not_parked_as_poison(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    # Reclaims every 100 ms of entries idle for 1 s, and poison after two claims: the old behaviour parked
    # these entries within about two seconds of outage; the outage below lasts five reclaim idle periods.
    # (Idle periods much shorter than the event loop's lag on a loaded machine would test the machine.)
    fast = {"reclaim_idle_ms": 1000, "reclaim_interval_s": 0.1, "poison_max_deliveries": 2}
    # Each worker's whole record meets the outage: loads, outcomes, hand-offs, the clock and telemetry.
    outages = [FaultyRecord(), FaultyRecord()]
    first = await workers.stream(**fast, wrappers=Wrappers(record=outages[0].around))
    second = await workers.stream(**fast, wrappers=Wrappers(record=outages[1].around))
    for outage in outages:
        outage.down = True
    bob = users(1)[0]
    # Payloads too large for a stream entry to carry: processing them needs PostgreSQL (a carried entry
    # would be pushed without it, and only its hand-off write would wait for the outage to end).
    pad = "x" * CARRY_PAYLOAD_MAX
    sent = [await notify(http, gw.url, [bob], payload={"n": i, "pad": pad}) for i in range(20)]

    # The outage lasts 5 s (five reclaim idle periods) and until the workers have met it several times.
    loop = asyncio.get_running_loop()
    ends = loop.time() + 5.0
    await wait_for(lambda: loop.time() >= ends and sum(p.refused for p in outages) >= 5,
                   timeout_s=30, message="workers meeting the outage")
    for pool in outages:
        pool.down = False

    async def all_offline() -> bool:
        rows = await db.fetch("SELECT status FROM deliveries WHERE user_id = $1", bob)
        return len(rows) == len(sent) and {r["status"] for r in rows} == {"offline"}

    await wait_for(all_offline, timeout_s=30, message="every delivery processed after the outage")
    assert await db.fetchval("SELECT count(*) FROM dlq") == 0
    assert await db.fetchval("SELECT count(*) FROM poison_entries") == 0
    assert await offline_ids(http, gw.url, bob) == sent
    assert first.worker.held_through_outage + second.worker.held_through_outage >= 1
    first.check()
    second.check()


async def test_ingest_tells_an_unknown_commit_outcome_from_a_refused_connection(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # The reply lost after the commit (found by the chaos suite's PostgreSQL-reset scenario, which got 503
    # 'unavailable', read as "not stored", for notifications that were committed and delivered).
    pool = FaultyRecord()
    gw = await gateways.start(wrappers=Wrappers(record=pool.around))
    pool.lose_replies = True
    [carol] = users(1)
    body = {"user_id": carol, "event": "unknown.outcome", "payload": {}}

    lost_reply = await http.post(f"{gw.url}/notifications", json=body)
    assert lost_reply.status_code == 503, lost_reply.text
    assert lost_reply.json()["error"]["code"] == "outcome_unknown"
    assert lost_reply.headers["retry-after"] == "1"
    # It was committed after all: a client told "not stored" would have been told wrong.
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE user_id = $1", carol) == 1

    pool.lose_replies, pool.down = False, True
    refused = await http.post(f"{gw.url}/notifications", json=body)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "unavailable"
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE user_id = $1", carol) == 1
