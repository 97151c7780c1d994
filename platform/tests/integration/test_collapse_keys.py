"""Collapse keys (issue 23, docs/contract.md "Collapse keys") on real Redis and PostgreSQL: a newer notification
with the same key for the same user replaces the older unacknowledged one (state ``replaced``), which is never
listed, pushed, retried or dead-lettered again; live sockets get the newer one with its key."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest
from helpers import wait_for
from integration_support import Gateways, SocketFactory, Workers, notify, offline_ids, offline_page, statuses, users

from notiflow import metrics
from notiflow.config import Settings
from notiflow.ids import new_id
from notiflow.models import Channel, NewNotification, StreamEntry
from notiflow.store import collapse as collapse_sql
from notiflow.store import deliveries as deliveries_sql
from notiflow.store import ingest as ingest_sql
from notiflow.store import queries as queries_sql
from notiflow.store.pool import connect_pool
from notiflow.worker import factory

pytestmark = pytest.mark.timeout(60)


async def _batch(http: httpx.AsyncClient, base: str, items: list[dict[str, object]]) -> httpx.Response:
    return await http.post(f"{base}/notifications/batch", json={"notifications": items})


async def test_newer_replaces_older_in_the_queue(gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    gw = await gateways.start()
    alice, bob = users(2)
    old = await notify(http, gw.url, [alice, bob], collapse_key="unread")
    plain = await notify(http, gw.url, [alice])
    other = await notify(http, gw.url, [alice], collapse_key="other")
    new = await notify(http, gw.url, [alice], collapse_key="unread")

    assert await offline_ids(http, gw.url, alice) == [plain, other, new]
    assert await offline_ids(http, gw.url, bob) == [old]  # bob got no newer one: his stays
    assert await statuses(db, old) == {alice: "replaced", bob: "pending"}
    page = await offline_page(http, gw.url, alice)
    assert [n.get("collapse_key") for n in page["notifications"]] == [None, "other", "unread"]
    assert "collapse_key" not in page["notifications"][0]  # listed only for a notification that has one
    detail = (await http.get(f"{gw.url}/notifications/{old}", params={"user_id": alice})).json()
    assert detail["status_counts"] == {"replaced": 1, "pending": 1}
    assert [d["status"] for d in detail["deliveries"]] == ["replaced"]

    # Acks of a replaced id change nothing and are no error, by ids and up to a seq.
    ack = await http.post(f"{gw.url}/notifications/offline/{alice}/ack", json={"ids": [old]})
    assert ack.status_code == 200 and ack.json() == {"acknowledged": 0}
    assert await statuses(db, old) == {alice: "replaced", bob: "pending"}
    ack = await http.post(f"{gw.url}/notifications/offline/{alice}/ack", json={"up_to_seq": 2})
    assert ack.status_code == 200 and ack.json() == {"acknowledged": 1}  # `plain` only
    assert await statuses(db, old) == {alice: "replaced", bob: "pending"}

    # An acknowledged delivery is not replaced: only open ones are.
    await http.post(f"{gw.url}/notifications/offline/{alice}/ack", json={"ids": [new]})
    newest = await notify(http, gw.url, [alice], collapse_key="unread")
    assert await statuses(db, new) == {alice: "delivered"}
    assert await offline_ids(http, gw.url, alice) == [other, newest]


async def test_within_one_batch_the_later_item_wins(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    [carol] = users(1)
    item = {"user_id": carol, "event": "e", "payload": {}, "collapse_key": "k"}
    before = metrics.REGISTRY.get_sample_value("notiflow_deliveries_replaced_total") or 0
    answer = await _batch(http, gw.url, [item, {**item, "collapse_key": "j"}, item, item])
    assert answer.status_code == 202, answer.text
    first, keyed_j, second, last = (r["id"] for r in answer.json()["results"])
    assert await offline_ids(http, gw.url, carol) == [keyed_j, last]
    assert await statuses(db, first) == {carol: "replaced"} == await statuses(db, second)
    assert metrics.REGISTRY.get_sample_value("notiflow_deliveries_replaced_total") == before + 2


async def test_concurrent_senders_leave_exactly_the_newest(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """Concurrent ingests of one key for one user: each batch replaces whatever committed before it (its
    replace statement runs after its user_seqs lock is held, store/collapse.py), so exactly the highest seq
    stays open, whichever batch wins which race."""
    gw = await gateways.start()
    [dave] = users(1)
    ids = await asyncio.gather(*(notify(http, gw.url, [dave], collapse_key="badge") for _ in range(40)))
    rows = await db.fetch("SELECT notification_id, seq, status FROM deliveries WHERE user_id = $1", dave)
    assert len(rows) == 40
    top = max(rows, key=lambda r: r["seq"])
    assert {r["status"] for r in rows if r is not top} == {"replaced"}
    assert top["status"] == "pending"
    assert await offline_ids(http, gw.url, dave) == [str(top["notification_id"])]
    assert str(top["notification_id"]) in ids


@pytest.mark.parametrize("bad", ["", "k" * 129, "a\nb", "tab\there", "\u200bzero", 7, ["k"]])
async def test_bad_keys_are_422(gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool, bad: object) -> None:
    gw = await gateways.start()
    [erin] = users(1)
    single = await http.post(f"{gw.url}/notifications", json={"user_id": erin, "event": "e", "collapse_key": bad})
    assert single.status_code == 422, single.text
    assert single.json()["error"]["code"] == "invalid_request"
    assert "collapse_key" in single.text
    ok = {"user_id": erin, "event": "e"}
    batch = await _batch(http, gw.url, [ok, {**ok, "collapse_key": bad}])
    assert batch.status_code == 422, batch.text
    assert [d["index"] for d in batch.json()["error"]["details"]] == [1]
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE user_id = $1", erin) == 0
    fine = await http.post(f"{gw.url}/notifications", json={**ok, "collapse_key": "k" * 128})
    assert fine.status_code == 202, fine.text


async def test_a_replaced_entry_in_the_stream_is_not_pushed(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """Both notifications wait in the stream (no worker yet) when the newer one replaces the older: the worker
    then pushes only the newer one, with its key in the frame, and records nothing for the older."""
    gw = await gateways.start()
    [fay] = users(1)
    sock = await socket(gw, fay)
    old = await notify(http, gw.url, [fay], collapse_key="score", payload={"v": 1})
    new = await notify(http, gw.url, [fay], collapse_key="score", payload={"v": 2})
    await workers.stream()
    [frame] = await sock.wait_ids([new])
    assert frame["collapse_key"] == "score" and frame["payload"] == {"v": 2}
    assert list(frame)[-1] == "created_at"
    await wait_for(lambda: _settled(db, new), timeout_s=10, message="the newer one handed off")
    # The older entry was processed too (the stream drains in order): nothing of it reached the socket.
    assert await db.fetchval("SELECT count(*) FROM delivery_attempts WHERE notification_id = $1", uuid.UUID(old)) == 0
    assert old not in {f["id"] for f in sock.frames + await sock.quiet(0.5)}
    assert await statuses(db, old) == {fay: "replaced"}


async def _settled(db: asyncpg.Pool, nid: str) -> bool:
    return "dispatched" in (await statuses(db, nid)).values()


async def test_a_replaced_retry_is_neither_retried_nor_dead_lettered(
    settings: Settings, gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """A delivery on the retry schedule that gets replaced: its entry, once due, is skipped (no attempt, no push),
    and an outcome written for it meanwhile (a worker that loaded it before the replacement) moves nothing and
    adds no DLQ row."""
    gw = await gateways.start()
    [gus] = users(1)
    old = await notify(http, gw.url, [gus], collapse_key="k")
    await db.execute("UPDATE deliveries SET status = 'retrying', attempts = 3, next_attempt_at = now() "
                     "WHERE notification_id = $1", uuid.UUID(old))
    async with factory.stream_worker(settings) as worker:
        deliveries = worker._d
        [work] = (await deliveries.load([StreamEntry(uuid.UUID(old), (gus,))])).values()
        await notify(http, gw.url, [gus], collapse_key="k")  # replaces it after the worker loaded it
        dead = deliveries.failure(work, Channel.SOCKET, "push failed", permanent=True)
        assert dead.dlq_reason is not None
        async with deliveries._pool.acquire() as conn:
            moved = await deliveries_sql.record_outcomes(conn, [dead], "test")
        assert moved["socket_rows"] == 0 and moved["dlq_rows"] == 0
        assert await deliveries.deliver_socket([StreamEntry(uuid.UUID(old), (gus,))]) == []
    row = await db.fetchrow("SELECT status, attempts, next_attempt_at FROM deliveries WHERE notification_id = $1",
                            uuid.UUID(old))
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("replaced", 3, None)
    assert await db.fetchval("SELECT count(*) FROM dlq") == 0




async def test_replacements_racing_acks_and_outcome_writes_never_deadlock(settings: Settings) -> None:
    """The replace statement locks the older deliveries in key order (LOCK_IN_KEY_ORDER), after its batch's user_seqs
    rows: keyed ingests racing socket acks and hand-offs of the same users' older deliveries queue, never deadlock."""
    pool = await connect_pool(settings.database_url_required, max_size=6)
    people = users(120, "race")
    try:
        async def ingest(key: str) -> list[tuple[uuid.UUID, str]]:
            items = [NewNotification(new_id(), [u], "e", "{}", None, None, collapse_key=key) for u in people[::-1]]
            async with pool.acquire() as conn, conn.transaction():
                await ingest_sql.insert_notifications(conn, items)
                await collapse_sql.apply_collapse(conn, collapse_sql.keyed_rows(items))
            return [(i.id, i.user_ids[0]) for i in items]

        async def ack(rows: list[tuple[uuid.UUID, str]]) -> None:
            async with pool.acquire() as conn:
                await queries_sql.ack_pairs(conn, [(u, str(n)) for n, u in rows])

        async def handoff(rows: list[tuple[uuid.UUID, str]]) -> None:
            async with pool.acquire() as conn:
                await deliveries_sql.record_handoffs(conn, [(n, u, "offline") for n, u in sorted(rows, reverse=True)])

        previous = await ingest("k")
        for _ in range(30):
            fresh, *_ = await asyncio.gather(ingest("k"), ack(previous[::2]), handoff(previous), ingest("k"))
            previous = fresh
    finally:
        await pool.close()
