"""A connection storm against one gateway: every socket registers, however small the Redis pool.

Found while measuring (issue 9): with 1,000 clients connecting 100 at a time, 4 to 23 sockets were closed with
1011 at registration, because redis-py's default pool answers the command after its ``max_connections``-th
concurrent one with "Too many connections" instead of waiting. The pool now blocks (up to
``REDIS_POOL_TIMEOUT_S``). With a pool of 4 connections and 300 sockets opened at once, the old pool closed
most of them; every one must now be registered in presence and receive what is sent to it.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis
from integration_support import Gateways, Socket, SocketFactory, Workers, notify, users
from websockets.exceptions import ConnectionClosed

from notiflow.config import Settings

pytestmark = pytest.mark.timeout(90)

SOCKETS = 300


async def test_300_sockets_opened_at_once_all_register_on_a_pool_of_4(
    gateways: Gateways,
    workers: Workers,
    socket: SocketFactory,
    http: httpx.AsyncClient,
    rds: aioredis.Redis,
    settings: Settings,
) -> None:
    gw = await gateways.start(redis_pool_max=4)
    await workers.stream()
    names = users(SOCKETS, "storm")

    async def open_one(user: str) -> Socket | str:
        try:
            return await socket(gw, user)  # ping/pong: the server answers only once presence is written
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            return f"{user}: closed {code} {exc.rcvd.reason if exc.rcvd else ''}"

    opened = await asyncio.gather(*(open_one(u) for u in names))
    refused = [r for r in opened if isinstance(r, str)]
    assert not refused, f"{len(refused)} of {SOCKETS} sockets were not registered, e.g. {refused[:3]}"

    node = gw.node_id
    pipe = rds.pipeline(transaction=False)
    for user in names:
        pipe.hget(settings.key("presence", user), node)
    counts = await pipe.execute()
    missing = [u for u, n in zip(names, counts, strict=True) if n != "1"]
    assert not missing, f"{len(missing)} users not in presence, e.g. {missing[:3]}"

    nid = await notify(http, gw.url, names)
    sockets = [s for s in opened if isinstance(s, Socket)]
    await asyncio.gather(*(s.wait_ids([nid], timeout_s=30) for s in sockets))
