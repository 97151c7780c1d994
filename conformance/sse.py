"""An instrumented SSE client (GET /sse/{user_id}): every event lands in the history as a socket's would.

A stream is recorded with the socket's observations (``ws_open``, ``ws_recv``, ``ws_close``, with
``transport="sse"``), so the checker holds it to I2 exactly as it holds a socket: a stream open while a
notification was accepted must receive it. ``reopen()`` resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from conformance.client import socket_headers
from conformance.history import History


class SseClient:
    """One user's event stream on one gateway; ``events`` in arrival order, ``ids`` de-duplicated."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, user: str, history: History, conn: str) -> None:
        self.http, self.base_url, self.user, self.history, self.conn = http, base_url.rstrip("/"), user, history, conn
        self.node = base_url.rsplit(":", 1)[-1]
        self.events: list[dict[str, Any]] = []
        self.received: dict[str, dict[str, Any]] = {}
        self.cids: set[str] = set()
        self.last_event_id: int | None = None
        self.closed_with: dict[str, Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._opens = 0

    async def open(self, *, resume: bool = False, timeout_s: float = 10.0) -> SseClient:
        """Open (with ``resume``, send the last event's id); returns once the answer's head arrived: the
        gateway registers the stream before answering, so it is live from then on."""
        headers = socket_headers(self.user)
        if resume and self.last_event_id is not None:
            headers["last-event-id"] = str(self.last_event_id)
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opens += 1
        self._reader = asyncio.create_task(self._read(headers, opened), name=f"sse-{self.conn}")
        async with asyncio.timeout(timeout_s):
            await opened
        return self

    async def _read(self, headers: dict[str, str], opened: asyncio.Future[None]) -> None:
        conn = f"{self.conn}#{self._opens}"
        try:
            async with self.http.stream("GET", f"{self.base_url}/sse/{self.user}", headers=headers,
                                        timeout=httpx.Timeout(15, read=None)) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise AssertionError(f"GET /sse/{self.user} answered {resp.status_code}: {resp.text[:300]}")
                self.history.observe(conn, "ws_open", conn=conn, user_id=self.user, node=self.node, live=True,
                                     transport="sse")
                opened.set_result(None)
                fields: dict[str, str] = {}
                async for line in resp.aiter_lines():
                    if line:
                        if not line.startswith(":"):
                            name, _, value = line.partition(":")
                            fields[name] = fields.get(name, "") + value.removeprefix(" ")
                        continue
                    self._on_event(conn, fields)
                    fields = {}
        except Exception as exc:  # noqa: BLE001 - reported to open() when it happens before the head
            if not opened.done():
                opened.set_exception(exc)
        finally:
            by = "server" if self.closed_with is not None else "client"
            self.history.observe(conn, "ws_close", conn=conn, user_id=self.user, code=None, by=by, transport="sse")
            self._changed.set()

    def _on_event(self, conn: str, fields: dict[str, str]) -> None:
        if fields.get("event") == "close":
            self.closed_with = json.loads(fields["data"])
        if fields.get("event") != "notification":
            return
        item = json.loads(fields["data"])
        if "id" in fields:  # an event above a hole in the seqs comes without one (contract §3a)
            self.last_event_id = int(fields["id"])
        self.events.append(item)
        nid = str(item["id"])
        self.received.setdefault(nid, item)
        cid = item["payload"].get("cid") if isinstance(item.get("payload"), dict) else None
        if cid is not None:
            self.cids.add(str(cid))
        self.history.observe(conn, "ws_recv", conn=conn, user_id=self.user, id=nid, seq=item.get("seq"), cid=cid,
                             event=item.get("event"), transport="sse")
        self._changed.set()

    async def wait_for_cids(self, cids: set[str], timeout_s: float) -> bool:
        return await self._wait(lambda: cids <= self.cids, timeout_s)

    async def _wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if self._reader is None or self._reader.done() or time.monotonic() >= deadline:
                return done()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._changed.wait()
        return True

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
