"""A gateway that loses its Pub/Sub subscription resends its sockets every open notification (issue 24,
window 2): frames published while it was unsubscribed are gone, and a socket that stayed open must still
get them (I2), however many notifications its user has open."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import redis.asyncio as aioredis
from helpers import wait_for
from integration_support import Gateways, SocketFactory, Workers, notify, users

from notiflow.streams.client import connection_name

# One more than the 200 oldest that resync used to resend.
OPEN_BEFORE_GAP = 201


async def _cut_subscriptions(rds: aioredis.Redis, name: str) -> None:
    """Kill the Pub/Sub connections named ``name`` (one gateway's: streams/client.py connection_name) on the
    real Redis (CLIENT KILL), again each time the gateway re-subscribes. The server may be shared with other
    test sessions: the name is this test's node's alone.

    By name, not by the process's own socket addresses: reading those (psutil over /proc/net/tcp, the whole
    machine's sockets, thousands after the suite's connection storms) held the interpreter long enough, once
    per re-subscription, to starve the gateway and the test on the same event loop."""
    while True:
        for client in await rds.client_list(_type="pubsub"):
            if client["name"] == name:
                with contextlib.suppress(aioredis.ResponseError):  # gone already
                    await rds.client_kill_filter(_id=client["id"])
        await asyncio.sleep(0.005)


async def _socket_status(http: httpx.AsyncClient, base_url: str, nid: str, user_id: str) -> str:
    response = await http.get(f"{base_url}/notifications/{nid}", params={"user_id": user_id})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return str(body["deliveries"][0]["status"])


async def test_a_subscription_gap_reaches_a_socket_with_more_than_200_open(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, rds: aioredis.Redis
) -> None:
    node = await gateways.start()
    await workers.stream()
    [ada] = users(1, "gap")
    # Reads whatever comes (resyncs repeat hundreds of frames), so the server never sees a slow reader.
    sock = await socket(node, ada, max_queue=None)
    batch = [{"user_id": ada, "event": "test.event", "payload": {"i": i}} for i in range(OPEN_BEFORE_GAP)]
    response = await http.post(f"{node.url}/notifications/batch", json={"notifications": batch})
    assert response.status_code == 202, response.text
    sent = [r["id"] for r in response.json()["results"]]
    await sock.wait_ids(sent, timeout_s=60)  # received live, not acknowledged: all still open

    # The gap: the subscription is cut while notifications are published. One published to the node while it
    # had no subscriber is recorded offline (PUBLISH found no receiver): that frame never reached the socket.
    cutter = asyncio.create_task(_cut_subscriptions(rds, connection_name("gateway", node.node_id)))
    published_in_gap: str | None = None
    try:
        for _ in range(30):
            nid = await notify(http, node.url, [ada])
            sent.append(nid)

            async def outcome(nid: str = nid) -> str | None:
                status = await _socket_status(http, node.url, nid, ada)
                return status if status in ("offline", "dispatched") else None

            if await wait_for(outcome, timeout_s=20, message=f"{nid} handed off or listed offline") == "offline":
                published_in_gap = nid
                break
    finally:
        cutter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cutter
    assert published_in_gap is not None, "no notification was published while the subscription was cut"

    # Once re-subscribed, the node resends what its sockets may have missed: every open notification.
    await sock.wait_ids(sent, timeout_s=30)
