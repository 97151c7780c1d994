"""The core delivery path on real Redis and PostgreSQL, with gateways and workers in process: live delivery
and ack, the offline queue (order, pagination, acks), several sockets on several nodes, cross-node routing,
TTL expiry, a large fan-out and a slow consumer."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import orjson
import pytest
from helpers import wait_for
from integration_support import (
    Gateways,
    SocketFactory,
    Workers,
    notify,
    offline_ids,
    offline_page,
    settled,
    status_of,
    statuses,
    users,
)

pytestmark = pytest.mark.timeout(60)


async def test_live_delivery_and_socket_ack(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    sw = await workers.stream()
    [alice] = users(1)
    sock = await socket(gw, alice)

    nid = await notify(http, gw.url, [alice], event="order.shipped", payload={"order": 42, "tags": ["a", "b"]})
    [frame] = await sock.wait_ids([nid])

    assert frame["type"] == "notification"
    assert frame["seq"] == 1
    assert frame["event"] == "order.shipped"
    assert frame["payload"] == {"order": 42, "tags": ["a", "b"]}
    assert isinstance(frame["created_at"], str) and frame["created_at"]
    assert await settled(db, nid) == {alice: "dispatched"}
    # Pushed live but not yet acknowledged: still in the offline queue (SPEC §2).
    assert await offline_ids(http, gw.url, alice) == [nid]

    await sock.ack([nid])

    async def acknowledged() -> bool:
        return await status_of(db, nid, alice) == "delivered"

    await wait_for(acknowledged, timeout_s=5)
    assert await offline_ids(http, gw.url, alice) == []
    detail = (await http.get(f"{gw.url}/notifications/{nid}")).json()
    assert detail["status_counts"] == {"delivered": 1}
    [delivery] = detail["deliveries"]
    assert delivery["user_id"] == alice and delivery["delivered_at"] is not None
    # A successful hand-off to a gateway writes no attempt row (SPEC §4: only failed socket attempts do).
    assert delivery["attempts"] == []
    assert await sock.quiet(0.2) == []  # exactly once
    sw.check()


async def test_offline_queue_and_ack_by_ids(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    bob, carol = users(2)
    first = await notify(http, gw.url, [bob, carol], payload={"n": 1})
    second = await notify(http, gw.url, [bob], payload={"n": 2})

    async def processed() -> bool:
        return await statuses(db, first) == {bob: "offline", carol: "offline"} and await statuses(db, second) == {
            bob: "offline"
        }

    await wait_for(processed, timeout_s=10)
    page = await offline_page(http, gw.url, bob)
    assert page["user_id"] == bob
    assert [(n["id"], n["seq"], n["payload"]) for n in page["notifications"]] == [
        (first, 1, {"n": 1}),
        (second, 2, {"n": 2}),
    ]
    assert page["next_after_seq"] is None

    ack = await http.post(f"{gw.url}/notifications/offline/{bob}/ack", json={"ids": [first]})
    assert ack.status_code == 200 and ack.json() == {"acknowledged": 1}
    assert await offline_ids(http, gw.url, bob) == [second]
    assert await status_of(db, first, bob) == "delivered"
    # Only bob's delivery of `first` changed; carol still has it.
    assert await status_of(db, first, carol) == "offline"
    assert await offline_ids(http, gw.url, carol) == [first]

    again = await http.post(f"{gw.url}/notifications/offline/{bob}/ack", json={"ids": [first]})
    assert again.status_code == 200 and again.json() == {"acknowledged": 0}  # idempotent
    assert await offline_ids(http, gw.url, bob) == [second]


async def test_ack_up_to_seq_and_keyset_pagination(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    [dave] = users(1)
    ids = [await notify(http, gw.url, [dave], payload={"i": i}) for i in range(7)]

    # I4: seqs are 1..n, consecutive, in acceptance order.
    rows = await db.fetch("SELECT notification_id, seq FROM deliveries WHERE user_id = $1 ORDER BY seq", dave)
    assert [(str(r["notification_id"]), r["seq"]) for r in rows] == list(zip(ids, range(1, 8), strict=True))

    seen: list[tuple[str, int]] = []
    after, pages = 0, 0
    while True:
        page = await offline_page(http, gw.url, dave, limit=3, after_seq=after)
        pages += 1
        seen += [(n["id"], n["seq"]) for n in page["notifications"]]
        if page["next_after_seq"] is None:
            break
        assert page["next_after_seq"] == page["notifications"][-1]["seq"]
        after = page["next_after_seq"]
        assert pages < 10
    assert seen == list(zip(ids, range(1, 8), strict=True))
    assert pages == 3  # 3 + 3 + 1

    ack = await http.post(f"{gw.url}/notifications/offline/{dave}/ack", json={"up_to_seq": 3})
    assert ack.json() == {"acknowledged": 3}
    assert await offline_ids(http, gw.url, dave) == ids[3:]
    assert (await offline_page(http, gw.url, dave, after_seq=5))["notifications"][0]["id"] == ids[5]
    again = await http.post(f"{gw.url}/notifications/offline/{dave}/ack", json={"up_to_seq": 3})
    assert again.json() == {"acknowledged": 0}
    everything = await http.post(f"{gw.url}/notifications/offline/{dave}/ack", json={"up_to_seq": 10**9})
    assert everything.json() == {"acknowledged": 4}
    assert await offline_ids(http, gw.url, dave) == []


async def test_concurrent_accepts_give_each_user_consecutive_seqs(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """Requests batched together by group commit, on two nodes at once: every user's seqs are exactly
    1..n, with no gap and no duplicate (I3, I4)."""
    a, b = await gateways.start(), await gateways.start()
    group = users(5)
    bodies = [group[i % 5 : i % 5 + 2] or group[:1] for i in range(40)]
    ids = await asyncio.gather(*(notify(http, (a, b)[i % 2].url, body) for i, body in enumerate(bodies)))
    assert len(set(ids)) == 40
    for user in group:
        seqs = [r["seq"] for r in await db.fetch("SELECT seq FROM deliveries WHERE user_id = $1", user)]
        expected = sum(user in body for body in bodies)
        assert sorted(seqs) == list(range(1, expected + 1)), user
    # The offline queue reads them back in seq order, even before any worker ran.
    page = await offline_page(http, a.url, group[0])
    assert [n["seq"] for n in page["notifications"]] == sorted(n["seq"] for n in page["notifications"])


async def test_a_socket_ack_names_bad_ids_as_bad_frames_and_still_applies_the_good_ones(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    [gus] = users(1)
    sock = await socket(gw, gus)
    upper, plain = await notify(http, gw.url, [gus]), await notify(http, gw.url, [gus])
    await sock.wait_ids([upper, plain])
    # Any spelling uuid.UUID reads is an id; the one bad id neither fails the others nor the batch they join.
    await sock.ack([upper.upper(), "not-a-uuid", uuid.UUID(plain).hex])
    error = await sock.recv()
    assert (error["type"], error["code"]) == ("error", "bad_frame") and "not-a-uuid" in error["message"], error

    async def both_acknowledged() -> bool:
        return await offline_ids(http, gw.url, gus) == []

    await wait_for(both_acknowledged, timeout_s=5)
    assert {await status_of(db, n, gus) for n in (upper, plain)} == {"delivered"}


async def test_an_ack_frame_with_a_ref_is_answered_acked_with_that_ref_once_its_commit_is_durable(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    [hal] = users(1)
    sock = await socket(gw, hal)
    nid = await notify(http, gw.url, [hal])
    await sock.wait_ids([nid])
    await sock.ack([nid], ref=2**53 - 1)
    answer = await sock.recv()
    # The ref alone: no ids echoed. And the commit is durable before the answer leaves.
    assert answer == {"type": "acked", "ref": 2**53 - 1}, answer
    assert await status_of(db, nid, hal) == "delivered"
    assert await offline_ids(http, gw.url, hal) == []
    await sock.ack([str(uuid.uuid4())], ref=0)  # unknown ids are confirmed all the same
    assert await sock.recv() == {"type": "acked", "ref": 0}


async def test_an_ack_frame_without_a_ref_is_applied_and_never_answered(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    [ivy] = users(1)
    sock = await socket(gw, ivy)
    nid = await notify(http, gw.url, [ivy])
    await sock.wait_ids([nid])
    await sock.ack([nid])

    async def acknowledged() -> bool:
        return await status_of(db, nid, ivy) == "delivered"

    await wait_for(acknowledged, timeout_s=5)
    # Committed, so any answer would have been queued before the pong: the next frame is the pong.
    await sock.conn.send('{"type":"ping"}')
    assert await sock.recv() == {"type": "pong"}


@pytest.mark.parametrize("ref", [-1, 2**53, "7", 1.5, True, None, [1]], ids=repr)
async def test_an_ack_frame_with_a_bad_ref_is_a_bad_frame_and_applies_nothing(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool,
    ref: object,
) -> None:
    gw = await gateways.start()
    await workers.stream()
    [jan] = users(1)
    sock = await socket(gw, jan)
    bad, good = await notify(http, gw.url, [jan]), await notify(http, gw.url, [jan])
    await sock.wait_ids([bad, good])
    frame: dict[str, object] = {"type": "ack", "ids": [bad], "ref": ref}  # None: "ref": null
    await sock.conn.send(orjson.dumps(frame).decode())
    error = await sock.recv()
    assert (error["type"], error["code"]) == ("error", "bad_frame") and "ref" in error["message"], error
    # Acks commit in order: once a later one is confirmed, the bad frame would have landed too.
    await sock.ack([good], ref=1)
    assert await sock.recv() == {"type": "acked", "ref": 1}
    assert await status_of(db, bad, jan) != "delivered"
    assert await offline_ids(http, gw.url, jan) == [bad]


async def test_ack_of_foreign_or_unknown_ids_changes_nothing(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    erin, frank = users(2)
    mine = await notify(http, gw.url, [erin])
    theirs = await notify(http, gw.url, [frank])
    unknown = str(uuid.uuid4())

    ack = await http.post(f"{gw.url}/notifications/offline/{erin}/ack", json={"ids": [theirs, unknown]})
    assert ack.status_code == 200 and ack.json() == {"acknowledged": 0}
    # Over the socket too: frank's id acknowledged on erin's socket changes nothing.
    sock = await socket(gw, erin)
    await sock.ack([theirs, unknown])
    assert await offline_ids(http, gw.url, frank) == [theirs]
    # Socket acks commit in order, off the read loop: once erin's own later ack has landed, the foreign
    # one has been handled too.
    await sock.ack([mine])

    async def own_ack_landed() -> bool:
        return await status_of(db, mine, erin) == "delivered"

    await wait_for(own_ack_landed, timeout_s=5)
    assert await offline_ids(http, gw.url, frank) == [theirs]
    assert await status_of(db, theirs, frank) in ("pending", "offline")
    assert await offline_ids(http, gw.url, erin) == []
    # A user's up_to_seq never reaches another user's queue.
    again = await notify(http, gw.url, [erin])
    ack_all = await http.post(f"{gw.url}/notifications/offline/{erin}/ack", json={"up_to_seq": 100})
    assert ack_all.json() == {"acknowledged": 1}
    assert await offline_ids(http, gw.url, erin) == []
    assert await offline_ids(http, gw.url, frank) == [theirs]
    assert await status_of(db, again, erin) == "delivered"


async def test_two_sockets_of_one_user_on_two_nodes_each_get_it(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    a, b = await gateways.start(), await gateways.start()
    await workers.stream()
    [gina] = users(1)
    on_a = await socket(a, gina)
    on_b = await socket(b, gina)
    also_on_a = await socket(a, gina)

    nid = await notify(http, a.url, [gina])
    for sock in (on_a, on_b, also_on_a):
        [frame] = await sock.wait_ids([nid])
        assert frame["seq"] == 1
    assert await settled(db, nid) == {gina: "dispatched"}

    # An ack on one socket settles it for every device.
    await on_b.ack([nid])

    async def delivered() -> bool:
        return await status_of(db, nid, gina) == "delivered"

    await wait_for(delivered, timeout_s=5)
    assert await offline_ids(http, a.url, gina) == []
    for sock in (on_a, on_b, also_on_a):
        assert await sock.quiet(0.1) == []


async def test_user_on_node_a_receives_what_node_b_accepted(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """I8: routing across nodes, and a node hears only its own users' traffic."""
    a, b = await gateways.start(), await gateways.start()
    await workers.stream()
    hank, ivy = users(2)
    on_a = await socket(a, hank)
    pushed_on_b = b.services.hub.frames_pushed

    nid = await notify(http, b.url, [hank, ivy])
    await on_a.wait_ids([nid])

    assert await settled(db, nid) == {hank: "dispatched", ivy: "offline"}
    assert b.services.hub.frames_pushed == pushed_on_b  # b holds no socket of hank: it saw nothing
    assert a.services.hub.frames_pushed >= 1


async def test_expired_notification_leaves_the_offline_queue(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    await workers.retry()  # the reconciler marks expired deliveries
    [jack] = users(1)
    short = await notify(http, gw.url, [jack], ttl_seconds=2)
    lasting = await notify(http, gw.url, [jack], ttl_seconds=3600)
    assert await offline_ids(http, gw.url, jack) == [short, lasting]

    async def gone() -> bool:
        return await offline_ids(http, gw.url, jack) == [lasting]

    await wait_for(gone, timeout_s=5)

    async def marked() -> bool:
        return await status_of(db, short, jack) == "expired"

    # The expiry sweep stays EXPIRY_SWEEPS[0]'s lag (2 s) behind the TTL, then a reconciler round.
    await wait_for(marked, timeout_s=10)
    # The lasting one is not expired: it waits as offline (its hand-off is written DISPATCH_RECORD_DELAY_MS late).
    assert await settled(db, lasting) == {jack: "offline"}
    detail = (await http.get(f"{gw.url}/notifications/{short}")).json()
    assert detail["status_counts"] == {"expired": 1}


async def test_expired_before_processing_is_never_pushed(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    [kate] = users(1)
    sock = await socket(gw, kate)
    nid = await notify(http, gw.url, [kate], ttl_seconds=1)

    async def past_ttl() -> bool:
        return bool(await db.fetchval("SELECT expires_at <= now() FROM notifications WHERE id = $1", uuid.UUID(nid)))

    await wait_for(past_ttl, timeout_s=5)
    await workers.stream()  # the worker finds it expired

    async def expired() -> bool:
        return await status_of(db, nid, kate) == "expired"

    await wait_for(expired, timeout_s=5)
    assert await sock.quiet(0.3) == []
    assert await offline_ids(http, gw.url, kate) == []


async def test_fan_out_to_3000_recipients(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    recipients = users(3000, "fan")
    online = [await socket(gw, u) for u in recipients[:3]]

    nid = await notify(http, gw.url, recipients, event="broadcast", payload={"all": True})

    async def processed() -> int:
        left = await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE notification_id = $1 AND status = 'pending'", uuid.UUID(nid)
        )
        return int(left) == 0

    await wait_for(processed, timeout_s=30)
    found = await statuses(db, nid)
    assert len(found) == 3000 and set(found) == set(recipients)
    assert {u for u, s in found.items() if s == "dispatched"} == set(recipients[:3])
    assert {s for u, s in found.items() if u not in recipients[:3]} == {"offline"}
    attempts = "SELECT count(*) FROM delivery_attempts WHERE notification_id = $1"
    assert await db.fetchval(attempts, uuid.UUID(nid)) == 0  # hand-offs that succeeded write no attempt rows
    for sock in online:
        await sock.wait_ids([nid])

    # Every recipient's offline queue holds it, with seq 1 (their first notification): read through the
    # gateway's query use case for all 3000 (HTTP in the same event loop costs ~2.5 ms a request) and over
    # HTTP for a sample.
    queries = gw.services.queries
    sem = asyncio.Semaphore(8)

    async def check(user: str) -> None:
        async with sem:
            page = await queries.offline(user, 0, 100)
        assert [(str(n["id"]), n["seq"]) for n in page["notifications"]] == [(nid, 1)], user

    await asyncio.gather(*(check(u) for u in recipients))
    for user in recipients[::60]:
        page = await offline_page(http, gw.url, user)
        assert [(n["id"], n["seq"]) for n in page["notifications"]] == [(nid, 1)], user


async def test_slow_consumer_is_closed_with_4008_and_keeps_its_queue(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start(ws_queue_max=4)
    [liam] = users(1)
    # A client that reads nothing: its library buffers at most one frame before it stops reading.
    slow = await socket(gw, liam, max_queue=1)
    ids = [await notify(http, gw.url, [liam], payload={"i": i, "pad": "x" * 2000}) for i in range(30)]
    # One worker batch brings all 30 frames to the node at once: far more than its queue of 4 holds.
    await workers.stream()

    assert await slow.close_code() == 4008
    assert len(slow.frames) < 30

    async def processed() -> bool:
        return not await db.fetchval("SELECT count(*) FROM deliveries WHERE user_id = $1 AND status = 'pending'", liam)

    await wait_for(processed, timeout_s=10)
    # Nothing it missed is lost: every notification waits in its offline queue, in order.
    assert await offline_ids(http, gw.url, liam) == ids
    assert gw.services.hub.counts().get(liam) is None  # the node let the socket go

    # A reconnecting client reads its queue and gets live traffic again.
    fresh = await socket(gw, liam)
    nid = await notify(http, gw.url, [liam])
    await fresh.wait_ids([nid])
