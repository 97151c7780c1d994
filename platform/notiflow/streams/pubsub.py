"""Routing to gateway nodes: one Pub/Sub channel per node, so a node hears only its own users' traffic. On a
Redis Cluster the channels are sharded (SPUBLISH/SSUBSCRIBE): each lives on the shard that owns its slot,
and a publish goes to that shard alone rather than to every node of the cluster. A message is a node's batch
of frames, encoded as frames.encode_batch says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from notiflow.config import Settings
from notiflow.frames import NodeBatch, encode_batch
from notiflow.streams.client import Redis, is_cluster, redis_errors

log = logging.getLogger(__name__)

class Router:
    """Publishes batches of frames to nodes."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._r = redis
        self._s = settings

    def channel(self, node_id: str) -> str:
        return self._s.key("node", node_id, "frames")

    async def publish(self, per_node: dict[str, NodeBatch]) -> dict[str, int]:
        """Publish each node its frames in one pipeline; returns each node's receiver count (0 means
        nobody listens there any more, so those users must be treated as offline)."""
        if not per_node:
            return {}
        nodes = list(per_node)
        async with redis_errors("publish"):
            pipe = self._r.pipeline(transaction=False)
            publish = pipe.spublish if is_cluster(self._r) else pipe.publish
            for node in nodes:
                publish(self.channel(node), encode_batch(per_node[node]))
            counts = await pipe.execute()
        return {n: int(c) for n, c in zip(nodes, counts, strict=True)}


class _Plain:
    """One subscription to a channel on standalone Redis."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._channel = channel

    async def open(self) -> None:
        async with redis_errors("subscribe"):
            await self._pubsub.subscribe(self._channel)

    async def read(self) -> str | None:
        async with redis_errors("pubsub read"):
            msg = await self._pubsub.get_message(timeout=1.0)
        return str(msg["data"]) if msg is not None and msg.get("type") == "message" else None

    async def close(self) -> None:
        # redis 8 types aclose, earlier versions do not: the ignore may be unused.
        await self._pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]


class _Sharded:
    """One sharded subscription on a Redis Cluster, through redis-py's sharded Pub/Sub: it follows a slot
    migration or a failover by itself, and says nothing of it. The shard owning the channel is watched here:
    when it changes, the channel is subscribed again on the new owner, then the sockets are re-synced."""

    def __init__(self, redis: Redis, channel: str, on_resubscribed: Callable[[], Awaitable[None]]) -> None:
        self._cluster: Any = redis
        self._pubsub: Any = self._cluster.pubsub()
        self._channel = channel
        self._on_resubscribed = on_resubscribed
        self._owner = ""

    def _owner_now(self) -> str:
        return str(self._cluster.get_node_from_key(self._channel).name)

    async def open(self) -> None:
        async with redis_errors("ssubscribe"):
            await self._pubsub.ssubscribe(self._channel)
            self._owner = self._owner_now()

    async def read(self) -> str | None:
        async with redis_errors("pubsub read"):
            msg = await self._pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
            owner = self._owner_now()
        if owner != self._owner:
            log.warning("shard channel moved", extra={"channel": self._channel, "from": self._owner, "to": owner})
            async with redis_errors("ssubscribe"):
                await self._pubsub.ssubscribe(self._channel)
            self._owner = owner
            await self._on_resubscribed()
        return str(msg["data"]) if msg is not None and msg.get("type") == "smessage" else None

    async def close(self) -> None:
        await self._pubsub.aclose()


class NodeListener:
    """Listens on one node's channel and survives Redis faults.

    Messages published while the subscription was down are lost by Pub/Sub's nature, so after every
    re-subscription ``on_resubscribed`` runs: the gateway uses it to resend what its sockets may have
    missed from PostgreSQL.
    """

    def __init__(
        self,
        redis: Redis,
        channel: str,
        on_message: Callable[[str], None],
        on_resubscribed: Callable[[], Awaitable[None]],
    ) -> None:
        self._r = redis
        self._channel = channel
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self.subscribed = asyncio.Event()

    def _subscription(self) -> _Plain | _Sharded:
        if is_cluster(self._r):
            return _Sharded(self._r, self._channel, self._on_resubscribed)
        return _Plain(self._r, self._channel)

    async def run(self) -> None:
        first = True
        delay_s = 0.1
        while True:
            sub = self._subscription()
            try:
                await sub.open()
                self.subscribed.set()
                if not first:
                    await self._on_resubscribed()
                first = False
                delay_s = 0.1
                while True:
                    data = await sub.read()
                    if data is not None:
                        self._on_message(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any fault of the subscription: resubscribe
                self.subscribed.clear()
                log.warning("pubsub lost", extra={"channel": self._channel, "error": str(exc)})
                first = False
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)
            finally:
                # Closing a broken connection may fail too; there is nothing left to do about it.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sub.close(), timeout=1.0)
