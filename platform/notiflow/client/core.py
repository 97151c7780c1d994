"""NotiflowClient: one user's notifications, each handed to the consumer once, across reconnects.

The connection (connection.py) keeps a socket open across gateways and, on every (re)connect, reads the
offline queue after the client's watermark (tracker.py) merged with the live frames, in seq order. Frames
already seen are dropped here (de-duplicated by seq watermark and id window). A notification is
acknowledged once the consumer comes back for the next one, or leaves the ``async with`` block without an
exception: acks are batched into socket ack frames, or POSTed to the ack endpoint when no socket is open.
A notification seen again after it was taken is acknowledged again (its first ack may have died with a
socket). Close codes and reconnects: connection.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import httpx
import orjson
from websockets.exceptions import ConnectionClosed

from notiflow.client.api import Api
from notiflow.client.auth import Auth
from notiflow.client.collapse import Collapser
from notiflow.client.connection import Connection
from notiflow.client.tracker import SeenTracker
from notiflow.client.types import AuthFailed, ClientError, Notification, TakenHook, Token, Unavailable
from notiflow.gateway.protocol import MAX_ACK_IDS

log = logging.getLogger("notiflow.client")


class NotiflowClient:
    """``async with NotiflowClient(urls, user_id, token) as c: async for n in c: ...``

    ``urls``: gateway base URLs (``http://host:port``), tried in turn. ``token``: None, a str (a JWT or
    an API key, sent as ``Authorization: Bearer``) or an async callable returning one, called again
    after a 4401/401. ``after_seq``: resume point (every seq at or below it was taken before).
    ``buffer``: notifications held for the consumer; a full buffer stops reading the socket, and a
    gateway that then closes it (4008) is recovered from by the queue read. ``window``: ids kept for
    de-duplication (memory is O(window)). Backoff: full jitter, ``backoff_base_ms`` .. ``backoff_cap_ms``.
    ``on_taken``: called with each notification once acknowledged-to-be (the CLI's resume state).
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        user_id: str,
        token: Token = None,
        *,
        after_seq: int = 0,
        buffer: int = 1000,
        window: int = 10_000,
        page_size: int = 500,
        backoff_base_ms: int = 250,
        backoff_cap_ms: int = 10_000,
        ack_interval_s: float = 0.05,
        ping_interval_s: float = 10.0,
        gap_check_s: float = 5.0,
        http: httpx.AsyncClient | None = None,
        on_taken: TakenHook | None = None,
    ) -> None:
        self.urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        if not self.urls:
            raise ValueError("give at least one gateway URL")
        self.user_id = user_id
        self.tracker = SeenTracker(after_seq, window=window)
        self.collapser = Collapser(window)
        self._ack_interval_s = ack_interval_s
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=10.0)
        auth = Auth(token)
        self._on_taken = on_taken
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=buffer)
        self._untaken: set[str] = set()
        self._last_taken: Notification | None = None
        self._acks: list[str] = []
        self._ack_wake = asyncio.Event()
        self._conn = Connection(
            self.urls, Api(self._http, auth, user_id), auth, self.tracker,
            emit=self._emit, ack=self._ack, requeue_acks=self._requeue_acks,
            after_seq=after_seq, held_max=buffer, page_size=page_size,
            backoff_ms=(backoff_base_ms, backoff_cap_ms), ping_interval_s=ping_interval_s, gap_check_s=gap_check_s,
        )  # fmt: skip
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: asyncio.Task[None] | None = None

    @property
    def url(self) -> str | None:
        """The gateway the socket is open to, if any."""
        return self._conn.link.url if self._conn.link else None

    @property
    def connected(self) -> asyncio.Event:
        """Set while a socket is open and caught up (live mode)."""
        return self._conn.connected

    @property
    def connects(self) -> int:
        """Sockets that got as far as live mode, since the client started."""
        return self._conn.connects

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self._conn.run(), name="notiflow-client")
        self._tasks = [self._runner, asyncio.create_task(self._ack_loop(), name="notiflow-client-acks")]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._took_previous()  # left the block normally: the last one was handled
        self._conn.leaving = True
        link = self._conn.link
        if link is not None:  # a normal close (1000), not the 1011 a cancelled `async with` socket sends
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.ws.close(), timeout=5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await asyncio.wait_for(self._flush_http(), timeout=5.0)
        except (TimeoutError, ClientError) as err:
            log.warning("acks not flushed at close; they stay in the offline queue", extra={"error": str(err)})
        if self._own_http:
            await self._http.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Notification:
        self._took_previous()
        while True:
            item = await self._next()
            if not self.collapser.stale(item):  # a newer one of its key came meanwhile: that one is next
                break
            self._untaken.discard(item["id"])
            self._ack(item["id"])
        self.collapser.taking(item)
        self._last_taken = item
        return item

    async def _next(self) -> Notification:
        if self._queue.empty():
            assert self._runner is not None, "use the client inside `async with`"
            getter = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait([getter, self._runner], return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if not getter.done() or getter.cancelled():
                self._runner.result()  # raises ClientGaveUp
                raise StopAsyncIteration
            item = getter.result()
        else:
            item = self._queue.get_nowait()
        self._untaken.discard(item["id"])
        return item

    def _took_previous(self) -> None:
        if self._last_taken is not None:
            taken, self._last_taken = self._last_taken, None
            self._ack(taken["id"])
            if self._on_taken:
                self._on_taken(taken)

    # -- what the connection reads ------------------------------------------------------------------

    async def _emit(self, item: Notification) -> None:
        if self.tracker.seen(item["id"], item["seq"]):
            if item["id"] not in self._untaken:
                self._ack(item["id"])  # taken before: its first ack may have died with a socket
            return
        self.tracker.add(item["id"], item["seq"])
        if self.collapser.stale(item):  # a newer one of its key was received: replaced (client/collapse.py)
            self._ack(item["id"])
            return
        self.collapser.received(item)
        self._untaken.add(item["id"])
        await self._queue.put(item)

    # -- acknowledgements ---------------------------------------------------------------------------

    def _ack(self, notification_id: str) -> None:
        self._acks.append(notification_id)
        self._ack_wake.set()

    def _requeue_acks(self, ids: list[str]) -> None:
        """The ids of ack frames a closed socket left unanswered: sent again with the next batch."""
        self._acks.extend(ids)

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            await asyncio.sleep(self._ack_interval_s)  # gather a batch
            self._ack_wake.clear()
            link = self._conn.link
            try:
                if link is not None:
                    while self._acks:
                        batch, self._acks = self._acks[:MAX_ACK_IDS], self._acks[MAX_ACK_IDS:]
                        ref = link.sent(batch)
                        try:
                            await link.ws.send(orjson.dumps({"type": "ack", "ids": batch, "ref": ref}).decode())
                        except ConnectionClosed:
                            link.confirmed(ref)  # never sent: queued again here, not with the unanswered
                            self._acks[:0] = batch
                            raise
                else:
                    await self._flush_http()
            except (ConnectionClosed, Unavailable, AuthFailed) as exc:
                log.info("acks deferred", extra={"error": str(exc), "pending": len(self._acks)})
                await asyncio.sleep(0.5)
                self._ack_wake.set()

    async def _flush_http(self) -> None:
        while self._acks:
            batch = self._acks[:MAX_ACK_IDS]
            await self._conn.post_ack({"ids": batch})
            del self._acks[: len(batch)]
