"""This node's sockets: a registry by user, and a bounded send queue per socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from notiflow import metrics
from notiflow.gateway.protocol import CloseCode
from notiflow.streams.pubsub import decode_frames

log = logging.getLogger(__name__)


class Connection:
    """One socket's send side. Frames wait in a bounded queue; when it overflows, the socket is closed
    with SLOW_CONSUMER rather than buffering without limit."""

    def __init__(self, user_id: str, queue_max: int, close: Callable[[CloseCode], None]) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_max)
        self._close = close
        self.closing: CloseCode | None = None
        self.acks_in_flight = 0  # ids of this socket's acks not yet committed

    def push(self, frame: str) -> None:
        if self.closing is not None:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.close(CloseCode.SLOW_CONSUMER)

    def close(self, code: CloseCode) -> None:
        if self.closing is None:
            self.closing = code
            self._close(code)


class Hub:
    """User id -> this node's connections of that user."""

    def __init__(self) -> None:
        self._users: dict[str, set[Connection]] = {}
        self.frames_pushed = 0
        self.size = 0  # connections registered on this node


    def add(self, conn: Connection) -> bool:
        """Register; True when it is the user's first socket on this node."""
        conns = self._users.setdefault(conn.user_id, set())
        if conn not in conns:
            conns.add(conn)
            self.size += 1
        return len(conns) == 1

    def remove(self, conn: Connection) -> bool:
        """Unregister; True when it was the user's last socket on this node."""
        conns = self._users.get(conn.user_id)
        if not conns or conn not in conns:
            return False
        conns.discard(conn)
        self.size -= 1
        if conns:
            return False
        del self._users[conn.user_id]
        return True

    def counts(self) -> dict[str, int]:
        return {u: len(c) for u, c in self._users.items()}

    def users(self) -> list[str]:
        return list(self._users)

    def connections(self) -> list[Connection]:
        return [c for conns in self._users.values() for c in conns]

    def push(self, user_id: str, frame: str) -> None:
        for conn in tuple(self._users.get(user_id, ())):
            conn.push(frame)
            self.frames_pushed += 1
            metrics.FRAMES.inc()

    def deliver(self, message: str) -> None:
        """A Pub/Sub message for this node: a batch of (user, frame)."""
        for user_id, frame in decode_frames(message):
            self.push(user_id, frame)
