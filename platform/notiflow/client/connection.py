"""The client's connection: one socket at a time, across gateways, and the catch-up that recovers what it missed.

On every (re)connect the connection opens the socket, sends a ping and waits for the pong (the gateway
answers only once the socket is registered in presence, so nothing accepted from then on can go
offline unseen), then reads every page of the offline queue after its watermark (tracker.py) and
merges it with the live frames that arrived meanwhile, in seq order, handing each to the client (core.py).

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
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from notiflow.backoff import compute_backoff_ms
from notiflow.client.api import Api, Link
from notiflow.client.auth import Auth
from notiflow.client.tracker import SeenTracker
from notiflow.client.types import AuthFailed, ClientGaveUp, Notification, Unavailable
from notiflow.gateway.protocol import CloseCode

log = logging.getLogger("notiflow.client")

_GIVE_UP: dict[int, str] = {
    CloseCode.BAD_USER_ID: "invalid user id", 4403: "not this user's token", 1009: "frame too large",
}
_PING = orjson.dumps({"type": "ping"}).decode()
_FRAME_FIELDS = ("id", "seq", "event", "collapse_key", "payload", "created_at")


class Connection:
    """The reconnect loop of one user's client (``run``), and the gateway to send HTTP calls to.

    Each notification read goes to ``emit``, in seq order per read; ``ack`` queues an ack again (an ack frame
    the gateway failed), ``requeue_acks`` takes the ids of the ack frames a closed socket left unanswered.
    ``after_seq``: taken before a restart, maybe never acknowledged: acknowledged up to it on the first socket.
    ``held_max``: live frames held back during a catch-up (past it they are read again from the queue).
    """

    def __init__(
        self,
        urls: list[str],
        api: Api,
        auth: Auth,
        tracker: SeenTracker,
        *,
        emit: Callable[[Notification], Awaitable[None]],
        ack: Callable[[str], None],
        requeue_acks: Callable[[list[str]], None],
        after_seq: int,
        held_max: int,
        page_size: int,
        backoff_ms: tuple[int, int],
        ping_interval_s: float,
        gap_check_s: float,
    ) -> None:
        self.urls = urls
        self._api = api
        self._auth = auth
        self.tracker = tracker
        self._emit = emit
        self._ack = ack
        self._requeue_acks = requeue_acks
        self._ack_up_to = after_seq  # taken before a restart, maybe never acknowledged
        self._stable = False
        self._held_max = held_max
        self._page_size = page_size
        self._backoff = backoff_ms
        self._ping_interval_s = ping_interval_s
        self._gap_check_s = gap_check_s
        self.link: Link | None = None
        self._index = random.randrange(len(self.urls))
        self.leaving = False  # the client's block is being left: no reconnect
        self.connected = asyncio.Event()
        self.connects = 0

    async def run(self) -> None:
        """Connect, read, reconnect, until ``leaving`` is set; raises ``ClientGaveUp``."""
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
                self.link = None
                self.connected.clear()
            if self.leaving:
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
                self.link = link
                if self._ack_up_to:
                    await self.post_ack({"up_to_seq": self._ack_up_to})
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
                self._requeue_acks(link.unanswered())

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
                elif len(link.held) < self._held_max:
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

    async def post_ack(self, body: dict[str, Any]) -> None:
        """POST an ack body to the gateway the socket is open to, else to the one to be tried next."""
        await self._api.ack(self.link.url if self.link else self.urls[self._index % len(self.urls)], body)
