"""This node's sockets: a registry by user, and a bounded send queue per socket."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from notiflow import metrics
from notiflow.frames import Handed, frame_created_at, route_frames
from notiflow.gateway.protocol import CloseCode

log = logging.getLogger(__name__)

_CREATED = '"created_at":"'  # a notification frame's last field (frames.notification_frame)


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` now, up to its first wait: None when it finished without one, else a task that finishes it.
    A socket's ASGI sends complete without waiting unless the transport is over its high-water mark, so a burst
    of frames costs no task (nor loop iteration) in the common case; Python 3.12's eager tasks do the same."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    except BaseException:
        coro.close()
        raise
    return asyncio.get_running_loop().create_task(_finish(coro, waiting))


async def _finish(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """The rest of an eagerly started coroutine, stepped as a task steps it: wait for what it waits on (an asyncio
    future, or None for a bare yield), resume it, until it returns. Cancelled, it is closed (its ``finally`` runs)."""
    try:
        while True:
            if isinstance(waiting, asyncio.Future):
                await asyncio.wait((waiting,))
            else:
                await asyncio.sleep(0)
            try:
                waiting = coro.send(None)  # it reads the future's result (or exception) itself
            except StopIteration:
                return
    except BaseException:
        coro.close()
        raise


class Connection:
    """One socket's send side. Frames wait in a bounded buffer; when it overflows, the socket is closed with
    SLOW_CONSUMER rather than buffering without limit. Every socket that got frames in a loop iteration is
    flushed by one callback (``FLUSHES``): ``send`` sends its frames through ASGI, in order, started eagerly
    (``start_eagerly``); only a send that must wait for the transport leaves a task, which sends what arrives
    meanwhile (within the bound) after it. An idle socket keeps no task."""

    __slots__ = (
        "_close", "_frames", "_max", "_scheduled", "_send", "_sending", "acks_in_flight", "closing", "user_id",
    )

    def __init__(
        self, user_id: str, queue_max: int, close: Callable[[CloseCode], None],
        send: Callable[[list[str]], Awaitable[bool]],
    ) -> None:
        self.user_id = user_id
        self._frames: list[str] = []  # appended, then taken whole (a deque costs 760 bytes even when empty)
        self._max = queue_max
        self._send: Callable[[list[str]], Awaitable[bool]] | None = send  # False once the socket is gone
        self._sending: asyncio.Task[None] | None = None
        self._scheduled = False
        self._close = close
        self.closing: CloseCode | None = None
        self.acks_in_flight = 0  # ids of this socket's acks not yet committed

    def push(self, frame: str) -> None:
        if self.closing is not None:
            return
        if len(self._frames) >= self._max:
            self.close(CloseCode.SLOW_CONSUMER)
            return
        self._frames.append(frame)
        if not self._scheduled and self._sending is None:
            self._scheduled = True
            FLUSHES.add(self)

    def flush(self) -> None:
        """Send what is buffered, unless a send is waiting already (it sends the rest after it)."""
        self._scheduled = False
        if self._sending is None and self._frames and self._send is not None:
            self._sending = start_eagerly(self._drain())

    async def _drain(self) -> None:
        """Sends what is buffered, oldest first, until nothing is."""
        try:
            while self._frames and self._send is not None:
                frames, self._frames = self._frames, []
                if not await self._send(frames):
                    self._send = None  # the socket is gone: nothing more is sent (or counted as sent)
                    return
                sent(frames)
        finally:
            self._sending = None

    def stop(self) -> None:
        """The socket is gone: nothing more is sent."""
        self._send = None
        if self._sending is not None:
            self._sending.cancel()

    @property
    def buffered(self) -> int:
        return len(self._frames)

    def close(self, code: CloseCode) -> None:
        if self.closing is None:
            self.closing = code
            self._close(code)


class SendMeter:
    """Counts the notification frames handed to sockets and observes their accept-to-send latency, once
    per event-loop iteration: a fan-out hands one notification to every socket in one iteration, and a
    histogram observation and a counter increment per frame were most of a frame's bookkeeping (2.1 µs
    per frame here, against 0.9 µs gathered). The send time is the first send of the iteration. A
    notification's frames all end alike (created_at is their last field): a frame that ends as the last one
    parsed did takes its accept time without being parsed."""

    __slots__ = ("_at", "_last_at", "_last_end", "_loop", "_pending")

    def __init__(self) -> None:
        self._pending: dict[float, int] = {}  # accept time (epoch s) -> frames written this iteration
        self._at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose next iteration flushes
        self._last_end = ""  # the end of the last notification frame parsed, from its created_at field on
        self._last_at = 0.0  # and its accept time

    def sent(self, frames: list[str]) -> None:
        """Gather the frames sent; they are observed in the next iteration, the send time being now."""
        pending = self._pending
        end, at = self._last_end, self._last_at
        for frame in frames:
            if not (end and frame.endswith(end)):
                accepted_at = frame_created_at(frame)
                if accepted_at is None:
                    continue
                end, at = frame[frame.rfind(_CREATED) :], accepted_at
            pending[at] = pending.get(at, 0) + 1
        self._last_end, self._last_at = end, at
        if not pending:
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Scheduled once per iteration (and again if an earlier loop closed before its flush ran).
            self._loop = loop
            self._at = time.time()
            loop.call_soon(self.flush)

    def flush(self) -> None:
        pending, self._pending, self._loop = self._pending, {}, None
        frames = 0
        for accepted_at, count in pending.items():
            metrics.DELIVERY_LATENCY.observe(max(0.0, self._at - accepted_at), count)
            frames += count
        if frames:
            metrics.FRAMES.inc(frames)


METER = SendMeter()
sent = METER.sent


class Flushes:
    """The sockets with frames to send once this loop iteration's callbacks have run: one callback flushes them
    all. A fan-out hands one frame to each of many sockets per iteration, and a task (or callback) per socket
    cost more than the frame's own send."""

    __slots__ = ("_conns", "_loop")

    def __init__(self) -> None:
        self._conns: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the pending callback runs in

    def add(self, conn: Connection) -> None:
        self._conns.append(conn)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # once per iteration (and again if an earlier loop closed before it ran)
            self._loop = loop
            loop.call_soon(self.run)

    def run(self) -> None:
        conns, self._conns, self._loop = self._conns, [], None
        for conn in conns:
            try:
                conn.flush()
            except Exception:  # one socket's failure is its own: the others are sent
                log.exception("socket send failed", extra={"user_id": conn.user_id})


FLUSHES = Flushes()


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

    def sockets(self) -> int:
        return sum(len(c) for c in self._users.values())

    def users(self) -> list[str]:
        return list(self._users)

    def connections(self) -> list[Connection]:
        return [c for conns in self._users.values() for c in conns]

    def push(self, user_id: str, frame: str) -> None:
        for conn in tuple(self._users.get(user_id, ())):
            conn.push(frame)
            self.frames_pushed += 1

    def deliver(self, message: str) -> Handed:
        """A Pub/Sub message for this node: a batch of (user, frame). Returns the (user, notification id)
        of the notification frames pushed to a socket, and of those whose user this node no longer holds."""
        pushed = 0
        handed: list[tuple[str, str]] = []
        missed: list[tuple[str, str]] = []
        for conns, frame, key in route_frames(message, self._users, missed):
            for conn in tuple(conns):
                conn.push(frame)
                pushed += 1
            if key is not None:
                handed.append(key)
        self.frames_pushed += pushed
        return Handed(handed, missed)
