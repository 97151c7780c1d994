"""NotiflowClient: one user's notifications, each handed to the consumer once, across reconnects.

On every (re)connect the client opens the socket, sends a ping and waits for the pong (the gateway
answers only once the socket is registered in presence, so nothing accepted from then on can go
offline unseen), then reads every page of the offline queue after its watermark (tracker.py) and
merges it with the live frames that arrived meanwhile, in seq order. Frames already seen are dropped
(de-duplicated by seq watermark and id window). A notification is acknowledged once the consumer comes
back for the next one, or leaves the ``async with`` block without an exception: acks are batched into
socket ack frames, or POSTed to the ack endpoint when no socket is open. A notification seen again
after it was taken is acknowledged again (its first ack may have died with a socket).

Close codes (gateway/protocol.py, SPEC §7): 4401 refreshes the token (when ``token`` is a callable)
and reconnects, else gives up; 4400 and 4403 give up (``ClientGaveUp``); 1012 (the node restarts)
reconnects at once to the next URL; anything else (4008 slow consumer, 1011, a dead node) reconnects
to the next URL after full-jitter backoff (notiflow.backoff). The queue read after a reconnect
recovers whatever the closed socket did not deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from notiflow.backoff import compute_backoff_ms
from notiflow.client.api import Api, Link
from notiflow.client.auth import Auth
from notiflow.client.collapse import Collapser
from notiflow.client.tracker import SeenTracker
from notiflow.client.types import AuthFailed, ClientError, ClientGaveUp, Notification, TakenHook, Token, Unavailable
from notiflow.gateway.protocol import MAX_ACK_IDS, CloseCode

log = logging.getLogger("notiflow.client")

_GIVE_UP: dict[int, str] = {
    CloseCode.BAD_USER_ID: "invalid user id", 4403: "not this user's token", 1009: "frame too large",
}
_PING = orjson.dumps({"type": "ping"}).decode()
_FRAME_FIELDS = ("id", "seq", "event", "collapse_key", "payload", "created_at")


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
        self._ack_up_to = after_seq  # taken before a restart, maybe never acknowledged
        self._stable = False
        self._auth = Auth(token)
        self._page_size = page_size
        self._backoff = (backoff_base_ms, backoff_cap_ms)
        self._ack_interval_s = ack_interval_s
        self._ping_interval_s = ping_interval_s
        self._gap_check_s = gap_check_s
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=10.0)
        self._api = Api(self._http, self._auth, user_id)
        self._on_taken = on_taken
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=buffer)
        self._untaken: set[str] = set()
        self._last_taken: Notification | None = None
        self._acks: list[str] = []
        self._ack_wake = asyncio.Event()
        self._link: Link | None = None
        self._index = random.randrange(len(self.urls))
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: asyncio.Task[None] | None = None
        self._leaving = False  # the block is being left: no reconnect
        self.connected = asyncio.Event()
        self.connects = 0

    @property
    def url(self) -> str | None:
        """The gateway the socket is open to, if any."""
        return self._link.url if self._link else None

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self._run(), name="notiflow-client")
        self._tasks = [self._runner, asyncio.create_task(self._ack_loop(), name="notiflow-client-acks")]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._took_previous()  # left the block normally: the last one was handled
        self._leaving = True
        if self._link is not None:  # a normal close (1000), not the 1011 a cancelled `async with` socket sends
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._link.ws.close(), timeout=5.0)
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

    # -- connection loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            url = self.urls[self._index % len(self.urls)]
            self._index += 1
            try:
                await self._session(url)
            except AuthFailed as exc:
                if not self._auth.can_refresh(exc):
                    raise ClientGaveUp(exc.code, str(exc)) from None
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                if code in _GIVE_UP:
                    raise ClientGaveUp(code, _GIVE_UP[code]) from None
                log.info("socket closed", extra={"url": url, "code": code})
                if code == CloseCode.UNAUTHORIZED and not self._auth.can_refresh(AuthFailed(code, "closed 4401")):
                    raise ClientGaveUp(code, "token refused (4401) and no way to refresh it") from None
            except (OSError, TimeoutError, InvalidHandshake, Unavailable) as exc:
                log.info("gateway unavailable", extra={"url": url, "error": str(exc) or type(exc).__name__})
            finally:
                self._link = None
                self.connected.clear()
            if self._leaving:
                return
            # A session that got as far as live mode resets the backoff: the next delay is uniform(0, base),
            # so that the users of a restarting node (1012) do not all land on the next one at once.
            failures = 1 if self._stable else failures + 1
            self._stable = False
            base, cap = self._backoff
            await asyncio.sleep(compute_backoff_ms(failures - 1, base_ms=base, cap_ms=cap) / 1000)

    async def _session(self, url: str) -> None:
        ws_url = url.replace("http", "ws", 1) + f"/ws/{self._api.user_path}"
        token = await self._auth.token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            ws = await connect(ws_url, additional_headers=headers, proxy=None, open_timeout=10,
                               ping_interval=self._ping_interval_s, ping_timeout=self._ping_interval_s)
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise AuthFailed(exc.response.status_code, "socket refused") from None
            raise
        async with ws:
            link = Link(ws, url)
            reader = asyncio.create_task(self._read(link))
            try:
                await ws.send(_PING)
                await self._until(link.pong.wait(), reader, timeout_s=10.0)
                self._link = link
                if self._ack_up_to:
                    await self._post_ack({"up_to_seq": self._ack_up_to})
                    self._ack_up_to = 0
                await self._catch_up(link)
                self._auth.succeeded()
                self._stable = True
                self.connects += 1
                self.connected.set()
                while not reader.done():
                    await asyncio.wait([reader], timeout=self._gap_check_s)
                    watermark = self.tracker.watermark
                    if not reader.done() and self.tracker.gaps:
                        await asyncio.wait([reader], timeout=self._gap_check_s)
                        if not reader.done() and self.tracker.gaps and self.tracker.watermark == watermark:
                            await self._catch_up(link)  # a gap that stays open: read the queue below it
                reader.result()
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await reader
                self._acks.extend(link.unanswered())

    @staticmethod
    async def _until(waiting: Any, reader: asyncio.Task[None], *, timeout_s: float) -> None:
        task = asyncio.ensure_future(waiting)
        try:
            done, _ = await asyncio.wait([task, reader], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
        if reader in done:
            reader.result()
        if task not in done:
            raise TimeoutError("no pong from the gateway")

    async def _read(self, link: Link) -> None:
        async for raw in link.ws:
            frame = orjson.loads(raw)
            kind = frame.get("type")
            if kind == "notification":
                item: Notification = {k: frame[k] for k in _FRAME_FIELDS if k in frame}  # type: ignore[assignment]
                if link.held is None:
                    await self._emit(item)
                elif len(link.held) < self._queue.maxsize:
                    link.held.append(item)
                else:
                    link.held_overflow = True  # still in the offline queue: the catch-up reads again
            elif kind == "pong":
                link.pong.set()
            elif kind == "acked":
                link.confirmed(frame.get("ref"))
            elif kind == "error" and frame.get("code") == "ack_failed":
                for nid in link.confirmed(frame.get("ref")):  # answered: queued again here, not resent twice
                    self._ack(nid)
            elif kind == "error":
                log.warning("gateway reported a bad frame", extra={"message": frame.get("message")})

    async def _catch_up(self, link: Link) -> None:
        """Every page of the offline queue after the watermark, merged with held live frames in seq order."""
        while True:
            link.held = link.held or []
            link.held_overflow = False
            known = max((n["seq"] for n in link.held), default=0)  # committed before the read: covered by it
            after = self.tracker.watermark
            highest = after
            while True:
                page = await self._api.offline(link.url, after, self._page_size)
                rows: list[Notification] = page["notifications"]
                if rows:
                    highest = rows[-1]["seq"]
                nxt = page.get("next_after_seq")
                cut = highest if nxt is not None else None
                live = [n for n in link.held if cut is None or n["seq"] <= cut]
                link.held = [n for n in link.held if cut is not None and n["seq"] > cut]
                for item in sorted(rows + live, key=lambda n: n["seq"]):
                    await self._emit(item)
                if nxt is None:
                    break
                after = int(nxt)
            self.tracker.raise_to(max(highest, known))
            if not link.held_overflow:
                link.held = None  # live from here on (no await between the last read and this switch)
                return

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

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            await asyncio.sleep(self._ack_interval_s)  # gather a batch
            self._ack_wake.clear()
            link = self._link
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
            await self._post_ack({"ids": batch})
            del self._acks[: len(batch)]

    async def _post_ack(self, body: dict[str, Any]) -> None:
        await self._api.ack(self._link.url if self._link else self.urls[self._index % len(self.urls)], body)
