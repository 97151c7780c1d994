"""GET /sse/{user_id} on real stores: live notifications routed to the stream as to a socket, the offline
queue replayed after Last-Event-ID with no gap and no repeat, acks through the ack endpoint, keep-alive
comments, who may open one (the socket's rule), and the stream's end when the gateway stops."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from helpers import wait_for
from integration_support import Gateways, Workers, notify, users
from sse_client import open_sse
from test_auth import auth_on, bearer, error_code, new_key, token

from notiflow.credentials import Scope
from notiflow.service.auth import KeyService

pytestmark = pytest.mark.timeout(60)


async def test_live_notifications_reach_the_stream_with_their_seq_as_id(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    gw, other = await gateways.start(), await gateways.start()
    await workers.stream()
    (user,) = users(1, "sse")
    async with open_sse(http, gw.url, user) as stream:
        assert (await http.get(f"{gw.url}/presence/{user}")).json() == {"online": True, "sockets": 1}
        sent = [await notify(http, other.url, [user], payload={"i": i}) for i in range(5)]  # routed across nodes
        got = await stream.wait_ids(set(sent))
        assert [e["id"] for e in got] == sent
        assert [e["_id"] for e in got] == [str(e["seq"]) for e in got]
        assert [e["payload"]["i"] for e in got] == list(range(5)) and stream.retry_ms == 1000
        assert set(got[0]) == {"id", "seq", "event", "payload", "created_at", "_id"}

    async def gone() -> bool:
        return (await http.get(f"{gw.url}/presence/{user}")).json() == {"online": False, "sockets": 0}

    await wait_for(gone, timeout_s=5, message="a closed stream leaves presence")
    assert gw.services.hub.size == 0


async def test_last_event_id_replays_the_offline_queue_then_live_without_repeats(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start()
    await workers.stream()
    (user,) = users(1, "resume")
    offline = [await notify(http, gw.url, [user], payload={"i": i}) for i in range(450)]  # three replay pages
    async with open_sse(http, gw.url, user) as first:
        got = await first.wait_ids(set(offline[:3]))
    last = int(got[2]["_id"])
    async with open_sse(http, gw.url, user, last_event_id=last) as stream:
        live = await notify(http, gw.url, [user], payload={"i": "live"})
        await stream.wait_ids({*offline[3:], live}, timeout_s=20)
        ids = [e["id"] for e in stream.events]
        assert ids == [*offline[3:], live], "replayed in seq order, then live, nothing twice"
        seqs = [e["seq"] for e in stream.events]
        assert seqs == list(range(last + 1, last + 1 + len(seqs))), "no gap"

        # Acknowledged ones are never replayed again.
        ack = await http.post(f"{gw.url}/notifications/offline/{user}/ack", json={"up_to_seq": seqs[-2]})
        assert ack.status_code == 200 and ack.json()["acknowledged"] == 450
    async with open_sse(http, gw.url, user) as again:
        await again.wait_ids({live})
        # The replay is in seq order: an acknowledged one replayed would have come before it.
        assert [e["id"] for e in again.events] == [live]


async def test_an_idle_stream_gets_keep_alive_comments(gateways: Gateways, http: httpx.AsyncClient) -> None:
    gw = await gateways.start(sse_keepalive_s=0.3)
    (user,) = users(1, "idle")
    async with open_sse(http, gw.url, user) as stream:
        assert await stream.read(5) == {"retry": "1000"}
        for _ in range(2):
            assert await stream.read(5) == {"comment": "keep-alive"}


async def test_a_stopping_gateway_ends_its_streams(gateways: Gateways, http: httpx.AsyncClient) -> None:
    gw = await gateways.start(shutdown_grace_s=20)
    (user,) = users(1, "stop")
    async with open_sse(http, gw.url, user) as stream:
        stopping = asyncio.create_task(gw.stop())
        await stream.until_end(10)
        assert stream.closed_with == {"code": 1012, "reason": "service_restart"}
        await asyncio.wait_for(stopping, timeout=10)  # well within the 20 s grace: the stream did not hold it


async def test_streams_need_the_users_own_token_or_a_read_key(
    gateways: Gateways, workers: Workers, keys: KeyService, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start(**auth_on())
    await workers.stream()
    alice, bob = users(2)
    read, send = await new_key(keys, Scope.READ), await new_key(keys, Scope.SEND)
    url = f"{gw.url}/sse/{bob}"
    assert error_code(await http.get(url), 401) == "unauthorized"
    for who in (token(alice), send):
        assert error_code(await http.get(url, headers=bearer(who)), 403) == "forbidden"
    assert error_code(await http.get(url, params={"token": read}), 401) == "unauthorized", "a key in an address"
    assert error_code(await http.get(url, headers=bearer(token(bob, ttl_s=-60))), 401) == "token_expired"
    assert error_code(await http.get(url, headers={**bearer(token(bob)), "last-event-id": "x"}), 400) == (
        "invalid_last_event_id"
    )
    assert gw.services.hub.size == 0, "a refused stream was registered"
    # EventSource sends no headers: ?token= works as on the socket.
    async with open_sse(http, gw.url, bob, params={"token": token(bob)}) as stream:
        sent = await http.post(f"{gw.url}/notifications", json={"user_id": bob, "event": "e", "payload": {}},
                               headers=bearer(send))
        await stream.wait_ids({sent.json()["id"]})
    # A backend relaying the stream: a read key, by header.
    async with open_sse(http, gw.url, bob, headers=bearer(read)) as relayed:
        sent = await http.post(f"{gw.url}/notifications", json={"user_id": bob, "event": "e", "payload": {}},
                               headers=bearer(send))
        await relayed.wait_ids({sent.json()["id"]})


async def test_a_key_stream_ends_when_its_key_is_revoked(
    gateways: Gateways, keys: KeyService, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start(**auth_on(sse_keepalive_s=0.5))
    (bob,) = users(1)
    created = await keys.create(f"k-{uuid.uuid4().hex[:8]}", frozenset({Scope.READ}))
    async with open_sse(http, gw.url, bob, headers=bearer(str(created["key"]))) as stream:
        assert await keys.revoke(str(created["name"]))
        await stream.until_end(10)
    assert stream.closed_with == {"code": 4401, "reason": "unauthorized"}


async def test_a_stream_closes_when_its_token_expires(gateways: Gateways, http: httpx.AsyncClient) -> None:
    gw = await gateways.start(**auth_on())
    (bob,) = users(1)
    async with open_sse(http, gw.url, bob, headers=bearer(token(bob, ttl_s=1.5))) as stream:
        await stream.until_end(10)
    assert stream.closed_with == {"code": 4401, "reason": "unauthorized"}


async def test_events_carry_ids_for_a_user_who_acknowledged_everything(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    """The watermark starts at the user's last committed seq: acknowledged seqs below are no hole."""
    gw = await gateways.start()
    await workers.stream()
    (user,) = users(1, "acked")
    for i in range(3):
        await notify(http, gw.url, [user], payload={"i": i})
    ack = await http.post(f"{gw.url}/notifications/offline/{user}/ack", json={"up_to_seq": 3})
    assert ack.json() == {"acknowledged": 3}
    async with open_sse(http, gw.url, user) as stream:
        nid = await notify(http, gw.url, [user], payload={"i": 3})
        (got,) = await stream.wait_ids({nid})
        assert got["seq"] == 4 and got["_id"] == "4"
