"""Limits against abuse (issue 10), on in-process gateways with real Redis and PostgreSQL: acks in flight
per socket, sockets per user and per node, browser origins, and the ingest rate limit (a token bucket in
Redis shared by every gateway). The frame-level limits (1009, binary frames) are proven black-box on raw
bytes in conformance/test_i11_limits.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from faults import Faulty
from helpers import wait_for
from integration_support import Gateways, SocketFactory, Workers, notify, table_counts, users
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from notiflow.config import Settings
from notiflow.gateway.protocol import CloseCode
from notiflow.service.ports import Wrappers

pytestmark = pytest.mark.timeout(60)


async def test_an_ack_flood_closes_the_socket_with_1008_and_acknowledges_nothing_more(
    gateways: Gateways, socket: SocketFactory, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start(ws_max_acks_in_flight=5)
    # Acks held back from their commit (a slow PostgreSQL): they stay in flight until released.
    release = asyncio.Event()
    real = gw.services.queries.ack_from_socket
    held: list[list[str]] = []

    later: set[asyncio.Task[None]] = set()

    def slow_ack(user_id: str, ids: list[str], done: Callable[[object], None]) -> None:
        held.append(ids)

        async def commit() -> None:
            await release.wait()
            real(user_id, ids, done)

        later.add(asyncio.create_task(commit()))

    gw.services.queries.ack_from_socket = slow_ack  # type: ignore[method-assign]
    (user,) = users(1)
    sock = await socket(gw, user)
    await sock.ack([str(uuid.uuid4()) for _ in range(3)])
    await sock.ack([str(uuid.uuid4()) for _ in range(2)])  # 5 in flight: at the bound, still open
    await wait_for(lambda: len(held) == 2)
    await sock.sync()
    await sock.ack([str(uuid.uuid4())])  # the sixth
    assert await sock.close_code() == CloseCode.POLICY_VIOLATION
    assert len(held) == 2, "the ack over the bound was submitted"
    release.set()


async def test_an_ack_naming_more_than_max_ack_ids_is_a_bad_frame(
    gateways: Gateways, socket: SocketFactory
) -> None:
    gw = await gateways.start(ws_max_ack_ids=3)
    (user,) = users(1)
    sock = await socket(gw, user)
    await sock.ack([str(uuid.uuid4()) for _ in range(4)])
    error = await sock.recv()
    assert (error["type"], error["code"]) == ("error", "bad_frame") and "at most 3" in error["message"], error
    await sock.sync()  # still open


async def test_sockets_per_user_are_bounded_across_nodes_with_4429(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, rds: aioredis.Redis,
    settings: Settings,
) -> None:
    await workers.stream()
    a = await gateways.start(ws_max_sockets_per_user=3)
    b = await gateways.start(ws_max_sockets_per_user=3)
    (user,) = users(1)
    kept = [await socket(a, user), await socket(b, user), await socket(a, user)]
    extra = await socket(b, user, sync=False)
    assert await extra.close_code() == CloseCode.TOO_MANY_SOCKETS
    # The refused socket left no presence behind: the three still get what is sent, and a fourth may
    # open once one of them has closed.
    nid = await notify(http, a.url, [user])
    for sock in kept:
        await sock.wait_ids([nid])
    await kept[0].close()

    async def two_left() -> bool:
        return sum(int(n) for n in (await rds.hgetall(settings.key("presence", user))).values()) == 2

    # The server counts the close after the closing handshake: wait for presence, not for the client.
    await wait_for(two_left, message="the closed socket left presence")
    await socket(b, user)
    other = await socket(a, users(1)[0])  # other users are not affected
    await other.sync()


async def test_sockets_per_node_are_bounded_with_1013(gateways: Gateways, socket: SocketFactory) -> None:
    gw = await gateways.start(ws_max_sockets=2)
    first, second = users(2)
    await socket(gw, first)
    await socket(gw, second)
    full = await socket(gw, users(1)[0], sync=False)
    assert await full.close_code() == CloseCode.TRY_AGAIN_LATER


async def test_browser_origins_not_allowed_are_refused_at_the_handshake(
    gateways: Gateways, socket: SocketFactory
) -> None:
    gw = await gateways.start(allowed_origins=["https://app.example"])
    (user,) = users(1)
    with pytest.raises(InvalidStatus) as refused:
        await connect(gw.ws_url(user), origin="https://evil.example", open_timeout=10, proxy=None)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    await socket(gw, user, origin="https://app.example")  # an allowed origin
    await socket(gw, user, origin="HTTPS://APP.EXAMPLE")  # origins compare case-insensitively
    await socket(gw, user)  # no Origin header: not a browser, allowed
    anywhere = await gateways.start(allowed_origins=["*"])
    await socket(anywhere, user, origin="https://evil.example")


async def test_by_default_no_browser_origin_may_open_a_socket(gateways: Gateways, socket: SocketFactory) -> None:
    gw = await gateways.start()
    with pytest.raises(InvalidStatus):
        await connect(gw.ws_url(users(1)[0]), origin="http://localhost:3000", open_timeout=10, proxy=None)  # type: ignore[arg-type]


async def test_the_ingest_rate_limit_is_one_bucket_per_client_across_gateways(
    gateways: Gateways, http: httpx.AsyncClient
) -> None:
    limits = {"ingest_rate_per_s": 0.5, "ingest_burst": 3}  # refills one token every two seconds
    a, b = await gateways.start(**limits), await gateways.start(**limits)
    (user,) = users(1)
    body = {"user_id": user, "event": "rate.test", "payload": {}}
    alice = {"authorization": "Bearer key-alice"}
    statuses = [
        (await http.post(f"{gw.url}/notifications", json=body, headers=alice)).status_code for gw in (a, b, a, b)
    ]
    assert statuses == [202, 202, 202, 429]
    limited = await http.post(f"{a.url}/notifications", json=body, headers=alice)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 2
    # Another client has its own bucket; the unauthenticated share one.
    other = await http.post(f"{a.url}/notifications", json=body, headers={"authorization": "Bearer key-bob"})
    assert other.status_code == 202
    anonymous = [(await http.post(f"{b.url}/notifications", json=body)).status_code for _ in range(4)]
    assert anonymous == [202, 202, 202, 429]
    # Nothing refused was stored: the user's queue holds exactly the accepted ones.
    queue = (await http.get(f"{a.url}/notifications/offline/{user}")).json()["notifications"]
    assert len(queue) == 3 + 1 + 3


async def test_the_ingest_rate_limit_counts_deliveries_and_refuses_a_request_over_the_burst(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # Issue 25, finding 3: the cost was capped at the burst and counted per notification, so a batch of
    # 1,000 or a notification to 10,000 users cost what one notification costs.
    gw = await gateways.start(ingest_rate_per_s=1, ingest_burst=3)
    many = users(10_000)
    one = {"event": "rate.test", "payload": {}}
    before = (await table_counts(db))["notifications"]
    batch = {"notifications": [{**one, "user_id": u} for u in many[:1000]]}
    for path, body, cost in [
        ("/notifications/batch", batch, 1000),
        ("/notifications", {**one, "user_ids": many}, 10_000),
    ]:
        resp = await http.post(f"{gw.url}{path}", json=body, headers={"authorization": "Bearer key-big"})
        assert resp.status_code == 413, (path, resp.status_code, resp.text[:300])
        error = resp.json()["error"]
        assert error["code"] == "over_ingest_burst" and "NOTIFLOW_INGEST_BURST" in error["message"], error
        assert error["details"]["deliveries"] == cost and error["details"]["ingest_burst"] == 3, error
    assert (await table_counts(db))["notifications"] == before, "a refused request stored something"
    # Small requests still pass: three deliveries, as one notification to three users or three single ones.
    small = await http.post(f"{gw.url}/notifications", json={**one, "user_ids": users(3)},
                            headers={"authorization": "Bearer key-small"})
    assert small.status_code == 202, small.text
    singles = [
        (await http.post(f"{gw.url}/notifications", json={**one, "user_id": u},
                         headers={"authorization": "Bearer key-singles"})).status_code
        for u in users(3)
    ]
    assert singles == [202, 202, 202]

    # Charged per recipient: after a notification to three users the bucket is empty (one token in 1,000 s).
    slow = await gateways.start(ingest_rate_per_s=0.001, ingest_burst=3)
    alice = {"authorization": "Bearer key-fanout"}
    first = await http.post(f"{slow.url}/notifications", json={**one, "user_ids": users(3)}, headers=alice)
    assert first.status_code == 202, first.text
    second = await http.post(f"{slow.url}/notifications", json={**one, "user_id": users(1)[0]}, headers=alice)
    assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limited", second.text
    assert "deliveries/s" in second.json()["error"]["message"]


async def test_the_rate_limit_fails_open_when_redis_does_not_answer(
    gateways: Gateways, http: httpx.AsyncClient
) -> None:
    # PostgreSQL alone can accept; Redis being away must not stop ingestion through the limiter.
    buckets = Faulty()
    buckets.hang("take")  # a black-holed Redis
    gw = await gateways.start(ingest_rate_per_s=0.001, ingest_burst=1, wrappers=Wrappers(buckets=buckets.around))
    limiter = gw.services.limiter
    (user,) = users(1)
    body = {"user_id": user, "event": "rate.test", "payload": {}}
    for _ in range(3):
        assert (await http.post(f"{gw.url}/notifications", json=body)).status_code == 202
    assert limiter.failed_open == 3


async def test_permessage_deflate_is_off_unless_enabled(gateways: Gateways, socket: SocketFactory) -> None:
    # The websockets client offers permessage-deflate; the server accepts it only when enabled.
    plain = await socket(await gateways.start(), users(1)[0])
    assert plain.conn.protocol.extensions == []
    deflating = await socket(await gateways.start(ws_permessage_deflate=True), users(1)[0])
    assert [e.name for e in deflating.conn.protocol.extensions] == ["permessage-deflate"]


async def test_a_ttl_over_the_retention_period_is_refused_naming_the_maximum_and_nothing_is_written(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start(retention_days=2)
    before = await table_counts(db)
    one = {"user_id": users(1)[0], "event": "e", "payload": {}, "ttl_seconds": 2 * 86400 + 1}
    single = await http.post(f"{gw.url}/notifications", json=one)
    assert single.status_code == 422, single.text
    assert single.json()["error"]["code"] == "ttl_too_long" and "172800" in single.json()["error"]["message"]
    batch = await http.post(
        f"{gw.url}/notifications/batch", json={"notifications": [{**one, "ttl_seconds": 60}, one]}
    )
    assert batch.status_code == 422, batch.text
    (bad,) = batch.json()["error"]["details"]
    assert (bad["index"], bad["code"], bad["details"]) == (1, "ttl_too_long", {"max_ttl_seconds": 172800})
    assert await table_counts(db) == before
    # At the maximum it is accepted, and without a ttl the notification expires after the retention period.
    assert (await http.post(f"{gw.url}/notifications", json={**one, "ttl_seconds": 172800})).status_code == 202
    plain = await http.post(f"{gw.url}/notifications", json={k: v for k, v in one.items() if k != "ttl_seconds"})
    lifetime = await db.fetchval(
        "SELECT extract(epoch FROM expires_at - created_at) FROM notifications WHERE id = $1",
        uuid.UUID(plain.json()["id"]),
    )
    assert lifetime == 172800
