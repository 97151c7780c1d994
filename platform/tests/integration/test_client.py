"""The Python client against in-process gateways and workers on real Redis and PostgreSQL: offline
catch-up over several pages, resume after a restart, acks, close codes that give up, token refresh."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from helpers import wait_for
from integration_support import Gateways, Workers, notify, offline_ids, users
from pydantic import SecretStr

from notiflow.client import ClientGaveUp, Notification, NotiflowClient, Producer
from notiflow.credentials import issue_token

_JWT_SECRET = "client-test-secret-of-at-least-32-bytes"

pytestmark = pytest.mark.timeout(60)


async def _take(client: NotiflowClient, count: int) -> list[Notification]:
    out: list[Notification] = []
    async for n in client:
        out.append(n)
        if len(out) == count:
            break
    return out


async def _drain(http: httpx.AsyncClient, url: str, user: str) -> None:
    async def empty() -> bool:
        return await offline_ids(http, url, user) == []

    await wait_for(empty, timeout_s=10, message=f"{user}'s offline queue emptied by the client's acks")


async def test_offline_queue_is_read_page_by_page_in_seq_order_then_live(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start()
    await workers.stream()
    (user,) = users(1)
    offline = [await notify(http, gw.url, [user], payload={"i": i}) for i in range(23)]

    async def all_offline() -> bool:
        return len(await offline_ids(http, gw.url, user)) == len(offline)

    await wait_for(all_offline, timeout_s=10)
    async with NotiflowClient([gw.url], user, page_size=5) as client:
        first = await asyncio.wait_for(_take(client, len(offline)), timeout=20)
        assert [n["id"] for n in first] == offline
        assert [n["seq"] for n in first] == list(range(1, 24))
        assert first[0]["payload"] == {"i": 0} and first[0]["event"] == "test.event"
        live = [await notify(http, gw.url, [user], payload={"live": i}) for i in range(5)]
        assert [n["id"] for n in await asyncio.wait_for(_take(client, 5), timeout=20)] == live
    await _drain(http, gw.url, user)


async def test_a_restarted_client_resumes_after_its_seq_and_acknowledges_what_it_took(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start()
    await workers.stream()
    (user,) = users(1)
    ids = [await notify(http, gw.url, [user]) for _ in range(6)]
    async with NotiflowClient([gw.url], user, ack_interval_s=3600) as client:  # acks only at close
        taken = await asyncio.wait_for(_take(client, 3), timeout=20)
        last_seq = taken[-1]["seq"]
    # Leaving the block flushed the acks of what was taken, over HTTP; the rest was not taken.
    assert await offline_ids(http, gw.url, user) == ids[3:]
    async with NotiflowClient([gw.url], user, after_seq=last_seq) as client:
        rest = await asyncio.wait_for(_take(client, 3), timeout=20)
    assert [n["id"] for n in rest] == ids[3:]
    await _drain(http, gw.url, user)


async def test_a_consumer_that_raises_does_not_acknowledge_the_one_it_was_handling(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start()
    await workers.stream()
    (user,) = users(1)
    ids = [await notify(http, gw.url, [user]) for _ in range(2)]
    with pytest.raises(RuntimeError):
        async with NotiflowClient([gw.url], user) as client:
            async for n in client:
                if n["id"] == ids[1]:
                    raise RuntimeError("consumer failed")
    assert await offline_ids(http, gw.url, user) == [ids[1]]


async def test_an_invalid_user_id_gives_up_with_the_close_code(gateways: Gateways) -> None:
    gw = await gateways.start()
    with pytest.raises(ClientGaveUp) as failure:
        async with NotiflowClient([gw.url], "bad\x01user") as client:
            await asyncio.wait_for(_take(client, 1), timeout=20)
    assert failure.value.code == 4400


async def test_a_refused_token_is_refreshed_by_the_callback(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    # A bootstrap key (every scope) sends; the socket needs the user's own token (API keys open none).
    gw = await gateways.start(auth="on", api_keys=[SecretStr("the-key")], jwt_secret=SecretStr(_JWT_SECRET))
    await workers.stream()
    (user,) = users(1)
    handed: list[str] = []
    fresh = issue_token(gw.settings, user, ttl_s=600)

    async def token() -> str:
        handed.append("stale" if not handed else fresh)
        return handed[-1]

    headers = {"Authorization": "Bearer the-key"}
    resp = await http.post(f"{gw.url}/notifications", json={"user_id": user, "event": "e"}, headers=headers)
    assert resp.status_code == 202
    async with NotiflowClient([gw.url], user, token=token, backoff_base_ms=10) as client:
        (n,) = await asyncio.wait_for(_take(client, 1), timeout=20)
    assert n["id"] == resp.json()["id"]
    assert handed == ["stale", fresh]


async def test_a_fixed_token_that_is_refused_gives_up(gateways: Gateways) -> None:
    gw = await gateways.start(auth="on", api_keys=[SecretStr("the-key")])  # a bootstrap key: every scope
    with pytest.raises(ClientGaveUp) as failure:
        async with NotiflowClient([gw.url], "alice", token="wrong") as client:
            await asyncio.wait_for(_take(client, 1), timeout=20)
    assert failure.value.code == 4401


async def test_collapse_keys_hand_over_the_newest_and_name_what_it_replaces(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    """docs/clients.md "Collapse keys": the queue holds only the newest of a key; a live one names the one it
    replaces; one of a key whose newer one is already buffered is dropped, never handed over."""
    gw = await gateways.start()
    await workers.stream()
    (user,) = users(1)
    await notify(http, gw.url, [user], collapse_key="badge", payload={"n": 1})
    second = await notify(http, gw.url, [user], collapse_key="badge", payload={"n": 2})
    plain = await notify(http, gw.url, [user])
    async with NotiflowClient([gw.url], user) as client:
        first = await asyncio.wait_for(_take(client, 2), timeout=20)
        assert [n["id"] for n in first] == [second, plain]
        assert first[0]["collapse_key"] == "badge" and "replaces" not in first[0] and "collapse_key" not in first[1]
        async with Producer([gw.url]) as producer:  # the producer sends keys too
            third = (await producer.send(user, "test.event", {"n": 3}, collapse_key="badge"))["id"]
        [live] = await asyncio.wait_for(_take(client, 1), timeout=20)
        assert live["id"] == third and live["replaces"] == second and live["payload"] == {"n": 3}
    await _drain(http, gw.url, user)
