"""A deliberately broken target: an HTTP and WebSocket proxy in front of one gateway that loses things on purpose
and writes down exactly what it lost, so a self-test can hold the suite's report against the truth.

Faults (each off unless configured):

- ``drop_ws_every=N``: every Nth notification frame sent to a socket of a user whose id contains
  ``ws_users`` is silently dropped (the platform still holds it in the offline queue: it was never acked).
- ``hide_every=M``: an offline-queue read of a user whose id contains ``hide_users`` leaves out every
  notification whose id hashes to 0 modulo M: consistently, in every read, as a queue that lost it would.

The proxy runs uvicorn in a thread with its own event loop, so a test can also point a pytest subprocess at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        drop_ws_every: int = 0,
        ws_users: str = "-live",
        ack_dropped: bool = False,
        hide_every: int = 0,
        hide_users: str = "-off",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.drop_ws_every, self.ws_users, self.ack_dropped = drop_ws_every, ws_users, ack_dropped
        self.hide_every, self.hide_users = hide_every, hide_users
        self.dropped: set[tuple[str, str]] = set()  # (notification id, user id) frames dropped
        self.hidden: set[tuple[str, str]] = set()  # (notification id, user id) left out of queue reads
        self._frames = 0
        self._lock = threading.Lock()
        self._http: httpx.AsyncClient | None = None
        app = Starlette(
            routes=[
                WebSocketRoute("/ws/{user_id:path}", self._ws),
                Route("/{path:path}", self._forward, methods=_METHODS),
            ]
        )
        # Keep-alive longer than the clients' pools (httpx: 5 s, as uvicorn's default): see the gateway's
        # NOTIFLOW_HTTP_KEEP_ALIVE_S.
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", timeout_keep_alive=75
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fault-proxy", daemon=True)
        self.url = ""

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> FaultProxy:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fault proxy did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

    # --- faults ------------------------------------------------------------------------------------
    def _hides(self, nid: str, user: str) -> bool:
        if not self.hide_every or self.hide_users not in user:
            return False
        with contextlib.suppress(ValueError):
            return uuid.UUID(nid).int % self.hide_every == 0
        return False

    def _drops(self, frame: dict[str, Any], user: str) -> bool:
        if not self.drop_ws_every or self.ws_users not in user or frame.get("type") != "notification":
            return False
        with self._lock:
            self._frames += 1
            if self._frames % self.drop_ws_every:
                return False
            self.dropped.add((str(frame["id"]), user))
            return True

    # --- HTTP --------------------------------------------------------------------------------------
    async def _forward(self, request: Request) -> Response:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        upstream = await self._http.request(
            request.method,
            self.upstream + request.url.path,
            params=request.url.query,
            content=await request.body(),
            headers=headers,
        )
        body = upstream.content
        parts = request.url.path.strip("/").split("/")
        if request.method == "GET" and parts[:2] == ["notifications", "offline"] and len(parts) == 3:
            body = self._hide(parts[2], upstream.status_code, body)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
        return Response(body, status_code=upstream.status_code, headers=out_headers)

    def _hide(self, user: str, status: int, body: bytes) -> bytes:
        if status != 200 or not self.hide_every or self.hide_users not in user:
            return body
        data = json.loads(body)
        kept = []
        for item in data["notifications"]:
            if self._hides(str(item["id"]), user):
                with self._lock:
                    self.hidden.add((str(item["id"]), user))
            else:
                kept.append(item)
        data["notifications"] = kept
        return json.dumps(data).encode()

    # --- WebSocket ---------------------------------------------------------------------------------
    async def _ws(self, client: WebSocket) -> None:
        user = client.path_params["user_id"]
        await client.accept()
        url = self.upstream.replace("http://", "ws://", 1) + f"/ws/{user}"
        try:
            upstream = await connect(url, open_timeout=10, max_size=2**22)
        except (OSError, TimeoutError, WebSocketException):
            await client.close(1011)
            return

        async def downstream() -> None:
            try:
                async for raw in upstream:
                    text = raw if isinstance(raw, str) else raw.decode()
                    frame = json.loads(text)
                    if not self._drops(frame, user):
                        await client.send_text(text)
                    elif self.ack_dropped:
                        await upstream.send(json.dumps({"type": "ack", "ids": [frame["id"]]}))
            except ConnectionClosed:
                pass
            code = upstream.close_code or 1000
            with contextlib.suppress(Exception):
                await client.close(code if code not in (1005, 1006) else 1011)

        down = asyncio.create_task(downstream())
        try:
            while True:
                await upstream.send(await client.receive_text())
        except (WebSocketDisconnect, ConnectionClosed, RuntimeError):
            pass
        finally:
            await upstream.close()
            down.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await down
