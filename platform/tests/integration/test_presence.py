"""GET /presence/{user_id} on real Redis: sockets counted across nodes, a dead node's count ignored once
its liveness key expires (the bound routing follows, SPEC I7), and who may ask (the offline queue's rule)."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis.asyncio as aioredis
from helpers import wait_for
from integration_support import Gateways, SocketFactory, users
from test_auth import auth_on, bearer, error_code, new_key, token

from notiflow.credentials import Scope
from notiflow.service.auth import KeyService
from notiflow.streams.keys import Keyspace

pytestmark = pytest.mark.timeout(60)


async def presence(http: httpx.AsyncClient, url: str, user: str, **kwargs: object) -> dict[str, object]:
    answer = await http.get(f"{url}/presence/{user}", **kwargs)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def test_presence_counts_sockets_on_live_nodes(
    gateways: Gateways, http: httpx.AsyncClient, socket: SocketFactory, rds: aioredis.Redis
) -> None:
    a, b = await gateways.start(), await gateways.start()
    (user,) = users(1, "presence")
    assert await presence(http, a.url, user) == {"online": False, "sockets": 0}
    first = await socket(a, user)
    await socket(b, user)
    for node in (a, b):
        assert await presence(http, node.url, user) == {"online": True, "sockets": 2}

    # A node that stops refreshing its liveness (killed): its sockets count until its score in the partition's
    # node set passes, then never. Written as the dead node's heartbeat left it, alive for 1 s more.
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    keys = Keyspace(a.settings)
    seconds, micros = await rds.time()
    await rds.hset(keys.presence(user), ghost, 3)
    await rds.zadd(keys.nodes(keys.of(user)), {ghost: seconds * 1000 + micros // 1000 + 1000})
    assert await presence(http, a.url, user) == {"online": True, "sockets": 5}

    async def ghost_gone() -> bool:
        return await presence(http, a.url, user) == {"online": True, "sockets": 2}

    await wait_for(ghost_gone, timeout_s=5, message="the dead node's sockets stopped counting")

    await first.close()
    await wait_for(lambda: b.services.hub.sockets() == 1 and a.services.hub.sockets() == 0, timeout_s=5)

    async def one_left() -> bool:
        return await presence(http, b.url, user) == {"online": True, "sockets": 1}

    await wait_for(one_left, timeout_s=5, message="a closed socket stopped counting")


async def test_presence_needs_the_users_token_or_a_read_key(
    gateways: Gateways, keys: KeyService, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start(**auth_on())
    alice, bob = users(2)
    read, send = await new_key(keys, Scope.READ), await new_key(keys, Scope.SEND)
    url = f"{gw.url}/presence/{bob}"
    assert error_code(await http.get(url), 401) == "unauthorized"
    assert error_code(await http.get(url, headers=bearer(token(alice))), 403) == "forbidden"
    assert error_code(await http.get(url, headers=bearer(send)), 403) == "forbidden"
    assert error_code(await http.get(url, params={"token": token(bob)}), 401) == "unauthorized"
    for who in (token(bob), read):
        assert await presence(http, gw.url, bob, headers=bearer(who)) == {"online": False, "sockets": 0}
    assert error_code(await http.get(f"{gw.url}/presence/{'x' * 300}", headers=bearer(read)), 422) == "invalid_user_id"
