"""GET /sse/{user_id}: the notification stream for clients that cannot hold a WebSocket (SPEC §3a).

A stream is a session like a socket: a Connection in the hub and a count in presence, so routing pushes
live notifications to it as to a socket. On (re)connect it first replays the offline queue after
``Last-Event-ID`` (the seq of the last event the client got), then the live ones, de-duplicated by seq;
each event is ``event: notification`` with ``id:`` its seq. Acks go through the ack endpoint. An idle
stream gets a keep-alive comment every ``SSE_KEEPALIVE_S``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from notiflow.credentials import Principal
from notiflow.errors import ApiError, StoreUnavailable, Unauthorized
from notiflow.gateway import responses as docs
from notiflow.gateway.auth import bearer_token, stream_owner
from notiflow.gateway.deps import Services, services
from notiflow.gateway.http import check_user_id, error_response
from notiflow.gateway.hub import Connection
from notiflow.gateway.protocol import CloseCode

router = APIRouter()

#: The reconnect delay the stream asks EventSource for (its ``retry:`` field), milliseconds.
RECONNECT_MS = 1000
#: Offline-queue rows read per query while replaying.
REPLAY_PAGE = 200
#: Seqs remembered per stream to drop live repeats (a resync, a frame racing the replay); bounded memory.
DEDUP_WINDOW = 10_000
#: How often a waiting stream looks whether its gateway is stopping, seconds.
_TICK_S = 0.5


def event(item: dict[str, Any], *, with_id: bool = True) -> str:
    """One notification as an SSE event: its seq as ``id`` (when ``with_id``), the SPEC §3 frame without
    ``type`` as data."""
    data = orjson.dumps(item).decode()
    head = f"id: {item['seq']}\n" if with_id else ""
    return f"{head}event: notification\ndata: {data}\n\n"


def closing_event(code: CloseCode) -> str:
    """The last event of a stream the gateway ends: the socket's close code and name (same meaning)."""
    return f"event: close\ndata: {orjson.dumps({'code': int(code), 'reason': code.name.lower()}).decode()}\n\n"


def last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) >= 2**63:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be the seq of an event of this stream")
    return int(raw)


class Stream:
    """One SSE session: the live frames its Connection hands over, and the events written so far."""

    def __init__(
        self, svc: Services, user_id: str, after_seq: int, expires_at: float | None, stopping: Callable[[], bool],
        recheck: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._svc = svc
        self._stopping = stopping
        self._recheck = recheck  # an API key's stream: is the key still valid (asked every SSE_KEEPALIVE_S)
        self.user_id = user_id
        self.after_seq = after_seq
        self.expires_at = expires_at
        self.closing: CloseCode | None = None
        self._live: asyncio.Queue[list[str]] = asyncio.Queue(maxsize=1)  # the Connection's buffer is the bound
        self._sent: set[int] = set()
        self._order: deque[int] = deque()
        # Every open notification with a seq up to the watermark has been written to this stream (or, up to
        # after_seq, was received by the client before). An event carries ``id:`` only when its seq is the
        # watermark's next: then a client's Last-Event-ID never claims a seq below which one is missing.
        self.watermark = after_seq
        self._above: set[int] = set()  # seqs written above a hole in the watermark
        self.conn = Connection(user_id, svc.settings.ws_queue_max, self._close, send=self._offer)

    def _close(self, code: CloseCode) -> None:
        self.closing = code
        if self._live.empty():
            self._live.put_nowait([])  # wakes the writer, which then sees ``closing``

    async def _offer(self, frames: list[str]) -> bool:
        """The Connection's send: waits while the writer is behind (frames then queue in the Connection,
        up to WS_QUEUE_MAX, past which it closes as a slow consumer)."""
        if self.closing is not None:
            return False
        await self._live.put(frames)
        return True

    def _fresh(self, seq: int) -> bool:
        if seq in self._sent:
            return False
        self._sent.add(seq)
        self._order.append(seq)
        if len(self._order) > DEDUP_WINDOW:
            self._sent.discard(self._order.popleft())
        return True

    def _events(self, items: Iterable[dict[str, Any]], *, replayed: bool = False) -> str:
        out: list[str] = []
        for i in items:
            seq = int(i["seq"])
            if not self._fresh(seq):
                continue
            if replayed:
                # The queue lists every open one in seq order: the seqs it skips were acknowledged or expired.
                self.watermark = max(self.watermark, seq - 1)
            out.append(event(i, with_id=self._advance(seq)))
        return "".join(out)

    def _reached(self, seq: int) -> None:
        """Every open notification up to ``seq`` has been written: the watermark moves there at least."""
        if seq <= self.watermark:
            return
        self.watermark = seq
        self._above = {s for s in self._above if s > seq}
        while self.watermark + 1 in self._above:
            self.watermark += 1
            self._above.discard(self.watermark)

    def _advance(self, seq: int) -> bool:
        """Account a seq about to be written; True when it is the watermark's next (its event gets ``id:``).
        A seq above a hole (one not pushed yet: retrying, or racing) is written without ``id:``, so that a
        client cut off before the hole fills resumes below it; once it fills, the watermark takes in what was
        written above it. A hole that never fills (acknowledged or expired before it was pushed here) only
        withholds ids: a resume then replays more, de-duplicated by id."""
        if seq != self.watermark + 1:
            if seq > self.watermark:
                self._above.add(seq)
                if len(self._above) > DEDUP_WINDOW:
                    self._above.clear()  # conservative: the watermark only moves less far
            return False
        self.watermark = seq
        while self.watermark + 1 in self._above:
            self.watermark += 1
            self._above.discard(self.watermark)
        return True

    async def replay(self) -> AsyncIterator[str]:
        """The offline queue after ``after_seq``, page by page, oldest first. Then every open notification up
        to the seq committed before the first page was read has been written: the watermark moves there (the
        stream was registered before, so any later one is pushed to it)."""
        committed = await self._svc.queries.last_seq(self.user_id)
        after = self.after_seq
        while True:
            page = await self._svc.queries.offline(self.user_id, after, REPLAY_PAGE)
            rows = [{"id": str(r["id"]), "seq": r["seq"], "event": r["event"],
                     **({"collapse_key": r["collapse_key"]} if "collapse_key" in r else {}),
                     "payload": r["payload"], "created_at": r["created_at"]} for r in page["notifications"]]
            if rows:
                yield self._events(rows, replayed=True)
            if page["next_after_seq"] is None:
                self._reached(committed)
                return
            after = int(page["next_after_seq"])

    async def live(self) -> AsyncIterator[str]:
        """Live frames as events, and a keep-alive comment when nothing was written for SSE_KEEPALIVE_S;
        ends when the stream is closed (slow consumer, token expired) or the gateway is stopping."""
        keepalive_s = self._svc.settings.sse_keepalive_s
        quiet_since = checked_at = time.monotonic()
        while self.closing is None:
            if self.expires_at is not None and time.time() >= self.expires_at:
                self.closing = CloseCode.UNAUTHORIZED
                break
            if self._recheck is not None and time.monotonic() - checked_at >= keepalive_s:
                checked_at = time.monotonic()
                if not await self._recheck():
                    self.closing = CloseCode.UNAUTHORIZED
                    break
            try:
                frames = await asyncio.wait_for(self._live.get(), timeout=min(_TICK_S, keepalive_s))
            except TimeoutError:
                if self._stopping():
                    self.closing = CloseCode.SERVICE_RESTART
                elif time.monotonic() - quiet_since >= keepalive_s:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            items = [orjson.loads(f) for f in frames]
            text = self._events({k: v for k, v in i.items() if k != "type"} for i in items
                                if i.get("type") == "notification")
            if text:
                quiet_since = time.monotonic()
                yield text
        if self.closing is not None:
            yield closing_event(self.closing)


class SseResponse(StreamingResponse):
    """Registers the stream in the hub and presence for exactly as long as the response runs: whatever
    ends it (the client gone, the stream closed, an error), the finally below unregisters it."""

    def __init__(self, svc: Services, stream: Stream) -> None:
        super().__init__(_body(stream), media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._svc = svc
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.conn.stop()
            self._svc.hub.remove(self._stream.conn)
            await self._svc.sessions.closed(self._stream.user_id)


def key_still_valid(svc: Services, key: str | None) -> Callable[[], Awaitable[bool]]:
    """Whether the API key a stream was opened with is still valid: a revoked key's streams end within
    SSE_KEEPALIVE_S. A store outage keeps the stream (asked again at the next interval)."""

    async def still_valid() -> bool:
        try:
            await svc.auth.authenticate(key)
        except Unauthorized:
            return False
        except StoreUnavailable:
            return True
        return True

    return still_valid


async def _body(stream: Stream) -> AsyncIterator[str]:
    yield f"retry: {RECONNECT_MS}\n\n"
    try:
        async for chunk in stream.replay():
            yield chunk
    except StoreUnavailable:
        yield closing_event(CloseCode.INTERNAL_ERROR)  # the client reconnects and replays from its last id
        return
    async for chunk in stream.live():
        yield chunk


SSE_DOCS = {
    200: {"description": "text/event-stream: `event: notification`, `id:` its seq, data the notification",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
} | docs.errors(400, 422, 429, 503)


@router.get("/sse/{user_id}", responses=SSE_DOCS, response_class=StreamingResponse,
            summary="The user's notifications as server-sent events (the socket's alternative)")
async def sse(request: Request, user_id: str, who: Annotated[Principal, Depends(stream_owner)]) -> Response:
    """That user's own token, as ``Authorization: Bearer`` or ``?token=`` (EventSource sends no headers), or an
    API key with the ``read`` scope as ``Authorization: Bearer`` (a backend relaying the stream); such a stream
    ends within SSE_KEEPALIVE_S of the key's revocation."""
    check_user_id(user_id)
    svc = services(request)
    after = last_event_id(request)
    limits = svc.settings
    if svc.hub.size >= limits.ws_max_sockets:
        return error_response(503, "node_full", "this gateway node holds WS_MAX_SOCKETS sessions: retry, maybe on "
                              "another node", headers={"retry-after": "1"})
    state = request.app.state
    # Once the gateway begins to stop (app.py's stop_serving), streams end so that clients go elsewhere.
    recheck = key_still_valid(svc, bearer_token(request)) if who.kind == "key" else None
    stream = Stream(svc, user_id, after, who.expires_at, lambda: state.stop_deadline is not None, recheck)
    svc.hub.add(stream.conn)  # in the hub before presence says so, as a socket (ws.py)
    try:
        sessions = await svc.sessions.opened(user_id)
    except StoreUnavailable:
        svc.hub.remove(stream.conn)
        raise
    if sessions > limits.ws_max_sockets_per_user:
        svc.hub.remove(stream.conn)
        await svc.sessions.closed(user_id)
        return error_response(429, "too_many_sockets", f"at most {limits.ws_max_sockets_per_user} sockets and "
                              "streams per user", headers={"retry-after": "1"})
    return SseResponse(svc, stream)
