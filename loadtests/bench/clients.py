"""WebSocket clients: one socket per online user, recording each notification frame and acknowledging it."""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .records import Stats


class Socket:
    """One user's socket: records every notification frame and acknowledges it at once."""

    def __init__(self, user: str, url: str, stats: Stats) -> None:
        self.user = user
        self.url = url
        self.stats = stats
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.open = False
        self._pong = asyncio.Event()

    async def connect(self) -> None:
        self.ws = await connect(
            self.url, compression=None, ping_interval=None, open_timeout=30, close_timeout=2, max_queue=None
        )
        self.open = True
        self.task = asyncio.create_task(self._read(), name=f"ws-{self.user}")

    async def registered(self, timeout_s: float) -> None:
        """A pong proves the gateway has put the socket in its hub, so its presence is registered."""
        assert self.ws is not None
        self._pong.clear()
        await self.ws.send('{"type":"ping"}')
        await asyncio.wait_for(self._pong.wait(), timeout_s)

    async def _read(self) -> None:
        assert self.ws is not None
        ws, stats, user = self.ws, self.stats, self.user
        arrivals = stats.arrivals
        try:
            async for message in ws:
                now = time.monotonic()
                frame = orjson.loads(message)
                kind = frame.get("type")
                if kind == "notification":
                    stats.frames += 1
                    nid = frame["id"]
                    key = (nid, user)
                    if key in arrivals:
                        stats.duplicates += 1
                    else:
                        arrivals[key] = now
                        if stats.window[0] <= now <= stats.window[1]:
                            stats.arrivals_in_window += 1
                    await ws.send(b'{"type":"ack","ids":["' + nid.encode() + b'"]}', text=True)
                    stats.acks_sent += 1
                elif kind == "pong":
                    self._pong.set()
        except ConnectionClosed as exc:
            if self.open:
                self.stats.closed_sockets[user] = f"closed {exc.rcvd.code if exc.rcvd else 'abnormally'}"
        finally:
            self.open = False

    async def close(self) -> None:
        was_open, self.open = self.open, False
        if self.ws is not None and was_open:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def open_sockets(users: list[str], urls: list[str], stats: Stats, timeout_s: float) -> list[Socket]:
    sockets = [
        Socket(u, f"{urls[i % len(urls)].replace('http://', 'ws://')}/ws/{u}", stats) for i, u in enumerate(users)
    ]
    limit = asyncio.Semaphore(50)

    async def one(sock: Socket) -> None:
        async with limit:
            await sock.connect()
            await sock.registered(timeout_s)

    await asyncio.wait_for(asyncio.gather(*(one(s) for s in sockets)), timeout_s)
    return sockets
