"""Topics on real Redis and PostgreSQL (docs/contract.md "Topics"): subscriptions over HTTP, topic notifications
expanded after their 202 into every subscriber's delivery (live and offline, seqs gapless), the subscribers at
acceptance, a topic's notifications in order, and an expansion that crashes between pages and resumes."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from faults import Faulty
from helpers import wait_for
from integration_support import Gateway, Gateways, SocketFactory, Workers, offline_page, post, users
from pydantic import SecretStr

from notiflow import ids
from notiflow.credentials import Scope
from notiflow.errors import StoreUnavailable
from notiflow.models import Channel, NewNotification, StreamEntry
from notiflow.service.auth import KeyService
from notiflow.service.ports import Wrappers
from notiflow.store import ingest as ingest_sql
from notiflow.store import topics as topics_sql

pytestmark = pytest.mark.timeout(90)


def _topic() -> str:
    return f"news-{uuid.uuid4().hex[:8]}"


async def _subscribe(http: httpx.AsyncClient, gw: Gateway, topic: str, user: str, **kw: Any) -> httpx.Response:
    return await http.put(f"{gw.url}/topics/{topic}/subscribers/{user}", **kw)


async def _send(http: httpx.AsyncClient, gw: Gateway, topic: str, n: int = 0) -> str:
    answer = (await post(http, gw.url, {"topic": topic, "event": "topic.news", "payload": {"n": n}})).json()
    assert answer["status"] == "accepted" and answer["recipients"] is None and answer["topic"] == topic, answer
    return str(answer["id"])


async def _expanded(db: asyncpg.Pool, nid: str, timeout_s: float = 30.0) -> int:
    """Wait until the send is done; its recipients."""

    async def done() -> asyncpg.Record | None:
        row = await db.fetchrow("SELECT done, recipients FROM topic_sends WHERE notification_id = $1", uuid.UUID(nid))
        return row if row is not None and row["done"] else None

    row = await wait_for(done, timeout_s, interval_s=0.05, message=f"topic notification {nid} finished expanding")
    return int(row["recipients"])


async def _queue(http: httpx.AsyncClient, gw: Gateway, user: str) -> list[dict[str, Any]]:
    return list((await offline_page(http, gw.url, user, limit=1000))["notifications"])


async def test_subscribe_list_page_and_unsubscribe(gateways: Gateways, http: httpx.AsyncClient) -> None:
    gw = await gateways.start()
    topic, people = _topic(), sorted(users(5))
    for u in people:
        assert (await _subscribe(http, gw, topic, u)).status_code == 204
    assert (await _subscribe(http, gw, topic, people[0])).status_code == 204  # again: nothing changes
    listed: list[str] = []
    after = ""
    for _ in range(5):
        page = (await http.get(f"{gw.url}/topics/{topic}/subscribers", params={"after": after, "limit": 2})).json()
        assert page["topic"] == topic and len(page["subscribers"]) <= 2
        listed += page["subscribers"]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert listed == people
    for _ in range(2):  # DELETE is idempotent too
        assert (await http.delete(f"{gw.url}/topics/{topic}/subscribers/{people[1]}")).status_code == 204
    page = (await http.get(f"{gw.url}/topics/{topic}/subscribers")).json()
    assert page == {"topic": topic, "subscribers": [u for u in people if u != people[1]], "next_after": None}


@pytest.mark.parametrize(("method", "path", "code"), [
    ("PUT", "/topics/%01bad/subscribers/alice", "invalid_topic"),
    ("PUT", f"/topics/{'t' * 256}/subscribers/alice", "invalid_topic"),
    ("PUT", "/topics/ok/subscribers/%7F", "invalid_user_id"),
    ("DELETE", "/topics/%E2%80%AEx/subscribers/alice", "invalid_topic"),
    ("GET", "/topics/%01/subscribers", "invalid_topic"),
    ("GET", "/topics/ok/subscribers?after=%01", "invalid_user_id"),
    ("GET", "/topics/ok/subscribers?limit=0", "invalid_request"),
])
async def test_bad_names_are_refused_clearly(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool, method: str, path: str, code: str
) -> None:
    gw = await gateways.start()
    response = await http.request(method, f"{gw.url}{path}")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert await db.fetchval("SELECT count(*) FROM topic_subscriptions") == 0


async def test_topic_in_a_body_is_one_of_three_recipient_forms(gateways: Gateways, http: httpx.AsyncClient) -> None:
    gw = await gateways.start()
    for body in ({"topic": "t", "user_id": "a", "event": "e"}, {"topic": "t", "user_ids": ["a"], "event": "e"},
                 {"topic": "bad\u0001", "event": "e"}, {"topic": "", "event": "e"}):
        response = await post(http, gw.url, body, expect=422)
        assert response.json()["error"]["code"] == "invalid_request", body
    batch = {"notifications": [{"user_id": "a", "event": "e"}, {"topic": "x/y", "event": "e"}]}
    response = await http.post(f"{gw.url}/notifications/batch", json=batch)
    assert response.status_code == 422 and response.json()["error"]["details"][0]["index"] == 1


async def test_scopes_send_or_admin(gateways: Gateways, http: httpx.AsyncClient, keys: KeyService) -> None:
    gw = await gateways.start(auth="on", jwt_secret=SecretStr("s" * 32), api_keys=[SecretStr("bootstrap-key")])
    tokens = {s: str((await keys.create(f"k-{s.value}-{uuid.uuid4().hex[:6]}", frozenset({s})))["key"])
              for s in Scope}
    path = f"{gw.url}/topics/{_topic()}/subscribers"
    for scope, expect in ((Scope.SEND, 204), (Scope.ADMIN, 204), (Scope.READ, 403)):
        headers = {"authorization": f"Bearer {tokens[scope]}"}
        assert (await http.put(f"{path}/alice", headers=headers)).status_code == expect, scope
        assert (await http.get(path, headers=headers)).status_code == (200 if expect == 204 else 403), scope
        assert (await http.delete(f"{path}/bob", headers=headers)).status_code == expect, scope
    assert (await http.get(path)).status_code == 401


async def test_topic_send_reaches_every_subscriber_live_and_offline(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool, socket: SocketFactory
) -> None:
    gw = await gateways.start()
    await workers.stream(topic_page=3)  # several pages, split over partitions
    topic, people = _topic(), users(8)
    for u in people:
        await _subscribe(http, gw, topic, u)
    live = await socket(gw, people[0])
    direct = str((await post(http, gw.url, {"user_id": people[1], "event": "direct", "payload": {}})).json()["id"])
    sent = [await _send(http, gw, topic, n) for n in range(3)]
    frames = await live.wait_ids(sent, timeout_s=30)
    assert [f["id"] for f in frames] == sent  # live, in the order they were accepted
    for nid in sent:
        assert await _expanded(db, nid) == len(people)
    for u in people[1:]:
        queue = await _queue(http, gw, u)
        topical = [n for n in queue if n["id"] in sent]
        assert [n["id"] for n in topical] == sent, u
        seqs = [n["seq"] for n in queue]
        assert seqs == list(range(1, len(seqs) + 1)), (u, seqs)  # gapless, in order
    assert next(n["id"] for n in await _queue(http, gw, people[1])) == direct
    shown = (await http.get(f"{gw.url}/notifications/{sent[0]}")).json()
    assert shown["recipients"] == len(people)
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE notification_id = ANY($1::uuid[])",
                             [uuid.UUID(n) for n in sent]) == 3 * len(people)


async def test_subscribers_at_acceptance(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    topic = _topic()
    stays, leaves, joins, back = users(4)
    for u in (stays, leaves, back):
        await _subscribe(http, gw, topic, u)
    await http.delete(f"{gw.url}/topics/{topic}/subscribers/{back}")
    nid = await _send(http, gw, topic)
    # After the 202 and before any expansion (no worker yet): these change nothing for it.
    await http.delete(f"{gw.url}/topics/{topic}/subscribers/{leaves}")
    await _subscribe(http, gw, topic, joins)
    await _subscribe(http, gw, topic, back)
    await workers.stream(topic_page=1)
    assert await _expanded(db, nid) == 2
    got = {r["user_id"] for r in await db.fetch(
        "SELECT user_id FROM deliveries WHERE notification_id = $1", uuid.UUID(nid))}
    assert got == {stays, leaves}
    # A notification accepted now goes by the subscriptions of now.
    later = await _send(http, gw, topic)
    assert await _expanded(db, later) == 3
    got = {r["user_id"] for r in await db.fetch(
        "SELECT user_id FROM deliveries WHERE notification_id = $1", uuid.UUID(later))}
    assert got == {stays, joins, back}


@pytest.mark.parametrize("fault", [
    RuntimeError("injected crash after a committed page"),  # the entry is left pending, reclaimed, resumed
    StoreUnavailable("injected: Redis away after a committed page"),  # held in place, resumed
], ids=["crash", "outage"])
async def test_expansion_that_crashes_between_pages_resumes_without_loss_or_duplicates(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool, fault: Exception
) -> None:
    gw = await gateways.start()
    topic, people = _topic(), users(10)
    for u in people:
        await _subscribe(http, gw, topic, u)
    # Something in every subscriber's queue before, so that a skipped or doubled seq would show.
    await post(http, gw.url, {"user_ids": people, "event": "before", "payload": {}})
    faulty = Faulty()
    pages: list[int] = []

    def second_page(entries: list[StreamEntry]) -> bool:
        # The stream writes of the expansion's pages: the second one fails once, after its page committed.
        if entries and entries[0].channel is Channel.SOCKET and entries[0].carried is not None \
                and entries[0].carried.event == "topic.news":
            pages.append(len(entries))
            return len(pages) == 2
        return False

    faulty.fail("add", fault, when=second_page)
    worker = await workers.stream(wrappers=Wrappers(work=faulty.around), topic_page=3)
    nid = await _send(http, gw, topic)
    assert await _expanded(db, nid) == len(people)
    assert len(pages) >= 2, "the fault never fired"
    assert worker.worker._topics.pages == 4  # 3 + 3 + 3 + 1: no page twice
    rows = await db.fetch("SELECT user_id, seq FROM deliveries WHERE notification_id = $1", uuid.UUID(nid))
    assert sorted(r["user_id"] for r in rows) == sorted(people)
    assert {r["seq"] for r in rows} == {2}  # each subscriber's next seq: none skipped, none taken twice
    for u in people:  # the page whose stream write failed was routed again from its rows: all settle offline
        await _settled_offline(db, nid, u)


async def _settled_offline(db: asyncpg.Pool, nid: str, user: str, timeout_s: float = 30.0) -> None:
    async def offline() -> bool:
        status = await db.fetchval("SELECT status FROM deliveries WHERE notification_id = $1 AND user_id = $2",
                                   uuid.UUID(nid), user)
        return bool(status == "offline")

    await wait_for(offline, timeout_s, interval_s=0.05, message=f"{user}'s delivery of {nid} settled offline")


async def test_a_topic_send_whose_stream_entry_was_never_written_is_expanded_by_the_reconciler(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    faulty = Faulty()
    faulty.fail("add", ConnectionError("injected: Redis away after the commit"),
                when=lambda entries: any(e.channel is Channel.TOPIC for e in entries))
    gw = await gateways.start(wrappers=Wrappers(work=faulty.around))
    topic, people = _topic(), users(3)
    for u in people:
        await _subscribe(http, gw, topic, u)
    await workers.stream()
    nid = await _send(http, gw, topic)  # committed; its entry's XADD failed (its outbox row stays)
    assert faulty.calls["add"] >= 1
    await workers.retry()  # its reconciler finds the send in the outbox and puts its entry on the stream
    assert await _expanded(db, nid) == len(people)
    for u in people:
        await _settled_offline(db, nid, u)


async def test_tombstones_stay_while_an_unfinished_send_needs_them(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await topics_sql.subscribe_pairs(conn, [("tomb", "ann")])
        item = NewNotification(id=ids.new_id(), user_ids=[], event="e", payload_json="{}", ttl_seconds=None,
                               webhook_url=None, topic="tomb")
        async with conn.transaction():
            await ingest_sql.insert_notifications(conn, [item])
            await topics_sql.insert_sends(conn, [item])
        await topics_sql.unsubscribe_pairs(conn, [("tomb", "ann")])
        await conn.execute("UPDATE topic_subscriptions SET ended_at = now() - interval '2 hours'")
        await topics_sql.purge(conn, 3600, 100)
        assert await conn.fetchval("SELECT count(*) FROM topic_subscriptions") == 1  # the send still needs it
        await topics_sql.finish(conn, item.id)
        await conn.execute("UPDATE topic_sends SET updated_at = now() - interval '2 hours'")
        assert await topics_sql.purge(conn, 3600, 100) == 2  # the tombstone and the finished send
        assert await conn.fetchval("SELECT count(*) FROM topic_subscriptions") == 0


async def test_a_topic_send_with_a_collapse_key_replaces_and_asks_for_receipts(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """A topic notification's collapse key and status_url reach every subscriber's delivery: the expansion
    replaces each one's older open delivery of that key (a direct one too), and flags its rows for receipts."""
    gw = await gateways.start(webhook_allowed_hosts=["127.0.0.1:9"])
    await workers.stream(topic_page=2)  # several pages: each replaces what it inserted over
    topic, people = _topic(), users(5)
    for u in people:
        await _subscribe(http, gw, topic, u)
    direct = (await post(http, gw.url, {"user_id": people[0], "event": "direct", "payload": {},
                                        "collapse_key": "score"})).json()["id"]
    body = {"topic": topic, "event": "topic.score", "collapse_key": "score"}
    first = (await post(http, gw.url, {**body, "payload": {"n": 1}})).json()["id"]
    second = (await post(http, gw.url, {**body, "payload": {"n": 2},
                                        "status_url": "http://127.0.0.1:9/receipts"})).json()["id"]
    for nid in (first, second):
        assert await _expanded(db, nid) == len(people)
    for u in people:
        listed = [n for n in await _queue(http, gw, u) if n.get("collapse_key") == "score"]
        assert [n["id"] for n in listed] == [second], (u, listed)
    states = await db.fetch(
        "SELECT notification_id, user_id, status, receipt FROM deliveries WHERE notification_id = ANY($1::uuid[])",
        [uuid.UUID(n) for n in (direct, first, second)],
    )
    replaced = {(str(r["notification_id"]), r["user_id"]) for r in states if r["status"] == "replaced"}
    assert replaced == {(direct, people[0])} | {(first, u) for u in people}
    flags = {(str(r["notification_id"]), r["receipt"]) for r in states}
    assert flags == {(direct, None), (first, None), (second, True)}
