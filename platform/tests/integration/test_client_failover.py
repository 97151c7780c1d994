"""The Python client across a gateway death: two gateway processes (DevStack), the one the client is
connected to SIGKILLed while notifications flow; every notification reaches the consumer exactly once,
and every one is acknowledged in the end (the offline queue is empty)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from helpers import wait_for
from integration_support import notify, offline_ids, users

from notiflow.client import Notification, NotiflowClient
from notiflow.devstack import DevStack

pytestmark = pytest.mark.timeout(120)

StackFactory = Callable[..., DevStack]


async def test_client_survives_the_death_of_its_gateway_exactly_once(
    stack: StackFactory, http: httpx.AsyncClient
) -> None:
    dev = await asyncio.to_thread(stack, gateways=2, stream_workers=1, retry_workers=1)
    (user,) = users(1, "failover")
    taken: list[Notification] = []
    sent: list[str] = []

    async with NotiflowClient(dev.gateway_urls, user, backoff_base_ms=50, ping_interval_s=2) as client:

        async def consume() -> None:
            async for n in client:
                taken.append(n)

        consumer = asyncio.create_task(consume())
        await asyncio.wait_for(client.connected.wait(), timeout=20)
        doomed = client.url
        assert doomed is not None
        survivor = next(u for u in dev.gateway_urls if u != doomed)

        async def produce(count: int) -> None:
            for i in range(count):
                sent.append(await notify(http, survivor, [user], payload={"i": len(sent), "round": i}))

        await produce(40)
        await wait_for(lambda: len(taken) >= 20, timeout_s=20)  # flowing live through the doomed node
        flow = asyncio.create_task(produce(80))
        await wait_for(lambda: len(sent) >= 60, timeout_s=20)
        dev.kill(f"gateway-{dev.gateway_urls.index(doomed)}")
        await flow
        await produce(40)  # after the death: live again, through the survivor

        await wait_for(lambda: {n["id"] for n in taken} >= set(sent), timeout_s=30,
                       message="every sent notification reached the consumer")
        assert client.url == survivor and client.connects >= 2

        async def all_acknowledged() -> bool:
            return await offline_ids(http, survivor, user) == []

        # The last one is acknowledged when the consumer asks for the next: the consumer is waiting.
        await wait_for(all_acknowledged, timeout_s=20, message="every notification acknowledged")
        consumer.cancel()

    ids = [n["id"] for n in taken]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicates reached the consumer"
    assert set(ids) == set(sent)
    print(f"{len(sent)} notifications, {client.connects} connections, 0 duplicates, 0 lost")
