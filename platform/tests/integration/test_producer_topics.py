"""The producer SDK's topic calls and status_url against a live gateway and stream worker (real Redis and
PostgreSQL): subscribe, list, send to the topic (its subscribers get it in their offline queue, an unsubscribed
user does not), unsubscribe; a status_url reaches every delivery's receipt flag; a bad topic name is a typed
error. The retry rules of these calls are in unit/test_producer_retries.py."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest
from helpers import wait_for
from integration_support import Gateway, Gateways, Workers, offline_page, users

from notiflow.client import InvalidNotification, Producer, SyncProducer, topic_notification

pytestmark = pytest.mark.timeout(90)

STATUS_URL = "http://127.0.0.1:9/receipts"  # never called here: only its flag on the deliveries is checked


async def _queued(http: httpx.AsyncClient, gw: Gateway, user: str, nid: str, timeout_s: float = 30.0) -> None:
    """Wait until ``nid`` is in ``user``'s offline queue."""

    async def listed() -> bool:
        page = await offline_page(http, gw.url, user, limit=1000)
        return any(n["id"] == nid for n in page["notifications"])

    await wait_for(listed, timeout_s, interval_s=0.05, message=f"{nid} in {user}'s offline queue")


async def _receipt_flags(db: asyncpg.Pool, nid: str) -> dict[str, bool | None]:
    rows = await db.fetch("SELECT user_id, receipt FROM deliveries WHERE notification_id = $1", uuid.UUID(nid))
    return {r["user_id"]: r["receipt"] for r in rows}


async def test_subscribe_list_send_to_the_topic_and_unsubscribe(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start(webhook_allowed_hosts=["127.0.0.1:9"])
    await workers.stream()
    topic = f"sdk news #{uuid.uuid4().hex[:8]}?"  # escaped in the path
    people = sorted(users(5, "sdk"))
    async with Producer(gw.url) as producer:
        for u in [*people, people[0]]:  # subscribing twice changes nothing
            await producer.subscribe(topic, u)
        assert [u async for u in producer.subscribers(topic, page_size=2)] == people
        page = await producer.subscribers_page(topic, after=people[1], limit=2)
        assert page == {"topic": topic, "subscribers": people[2:4], "next_after": people[3]}
        gone = people[4]
        for _ in range(2):  # unsubscribing twice too
            await producer.unsubscribe(topic, gone)
        assert [u async for u in producer.subscribers(topic)] == people[:4]

        sent = await producer.send_topic(topic, "sdk.topic", {"n": 1}, status_url=STATUS_URL)
        assert sent["recipients"] is None and sent["topic"] == topic and sent["status"] == "accepted"
        (batched,) = await producer.send_many([topic_notification(topic, "sdk.topic", {"n": 2})])
        assert not isinstance(batched, Exception) and batched["topic"] == topic
        direct = await producer.send(people[0], "sdk.direct", status_url=STATUS_URL)

    for nid in (sent["id"], batched["id"]):
        for u in people[:4]:
            await _queued(http, gw, u, nid)
    assert (await offline_page(http, gw.url, gone))["notifications"] == []  # expanded whole: one page
    assert await _receipt_flags(db, sent["id"]) == dict.fromkeys(people[:4], True)
    assert await _receipt_flags(db, batched["id"]) == dict.fromkeys(people[:4], None)  # asked for none
    assert await _receipt_flags(db, direct["id"]) == {people[0]: True}


async def test_the_sync_producer_subscribes_and_lists(gateways: Gateways) -> None:
    gw = await gateways.start()
    topic, people = f"sync-{uuid.uuid4().hex[:8]}", sorted(users(4, "sync"))

    def run() -> list[str]:
        with SyncProducer(gw.url) as producer:
            for u in people:
                producer.subscribe(topic, u)
            producer.unsubscribe(topic, people[1])
            return list(producer.subscribers(topic, page_size=2))

    assert await asyncio.to_thread(run) == [people[0], *people[2:]]


@pytest.mark.parametrize("call", ["subscribe", "unsubscribe", "subscribers_page", "send_topic"])
async def test_a_bad_topic_name_is_a_typed_error(gateways: Gateways, db: asyncpg.Pool, call: str) -> None:
    gw = await gateways.start()
    args = {"subscribe": ("alice",), "unsubscribe": ("alice",), "subscribers_page": (), "send_topic": ("e",)}[call]
    async with Producer(gw.url) as producer:
        with pytest.raises(InvalidNotification) as raised:
            await getattr(producer, call)("bad\x01topic", *args)
        assert producer.attempts == 1  # refused at once, not retried
    assert raised.value.status == 422
    assert raised.value.code == ("invalid_request" if call == "send_topic" else "invalid_topic")
    assert await db.fetchval("SELECT count(*) FROM topic_subscriptions") == 0
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
