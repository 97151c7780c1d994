"""Routing to gateway nodes: one Pub/Sub channel per node, so a node hears only its own users' traffic.

A message is a batch of frames, one line each: ``user_id \\t frame-json``. User ids cannot contain
control characters, and the frames are compact JSON, so neither separator can occur inside a field.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from notiflow.config import Settings
from notiflow.streams.client import Redis, redis_errors

log = logging.getLogger(__name__)


def encode_frames(frames: list[tuple[str, str]]) -> str:
    return "\n".join(f"{user}\t{frame}" for user, frame in frames)


def decode_frames(message: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in message.split("\n"):
        user, sep, frame = line.partition("\t")
        if sep:
            out.append((user, frame))
    return out


class Router:
    """Publishes batches of frames to nodes."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._r = redis
        self._s = settings

    def channel(self, node_id: str) -> str:
        return self._s.key("node", node_id, "frames")

    async def publish(self, per_node: dict[str, list[tuple[str, str]]]) -> dict[str, int]:
        """Publish each node its frames in one pipeline; returns each node's receiver count (0 means
        nobody listens there any more, so those users must be treated as offline)."""
        if not per_node:
            return {}
        nodes = list(per_node)
        async with redis_errors("publish"):
            pipe = self._r.pipeline(transaction=False)
            for node in nodes:
                pipe.publish(self.channel(node), encode_frames(per_node[node]))
            counts = await pipe.execute()
        return {n: int(c) for n, c in zip(nodes, counts, strict=True)}


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

    async def run(self) -> None:
        first = True
        delay_s = 0.1
        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                async with redis_errors("subscribe"):
                    await pubsub.subscribe(self._channel)
                self.subscribed.set()
                if not first:
                    await self._on_resubscribed()
                first = False
                delay_s = 0.1
                while True:
                    async with redis_errors("pubsub read"):
                        msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._on_message(str(msg["data"]))
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
                    await asyncio.wait_for(pubsub.aclose(), timeout=1.0)  # type: ignore[no-untyped-call]
