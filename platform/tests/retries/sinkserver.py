"""A webhook downstream that fails on purpose: a tiny HTTP/1.1 server on the test's own event loop.

It answers by path (``<tag>`` keeps each test's calls apart), counts per ``webhook-id`` (one delivery),
verifies every request's Standard Webhooks signature with the reference ``standardwebhooks`` package, and
records each request with its arrival time.

| path | answer |
| --- | --- |
| ``/ok/<tag>`` | 200 |
| ``/flaky/<n>/<tag>`` | 500 for the first ``n`` requests of each delivery, then 200 |
| ``/dead/<tag>`` | always 500 |
| ``/reject/<tag>`` | always 400 (permanent) |
| ``/throttle/<n>/<ra>/<tag>`` | 429 with ``Retry-After: <ra>`` for the first ``n`` of each delivery, then 200 |
| ``/slow/<seconds>/<tag>`` | 200 after ``seconds`` (longer than the client's timeout) |
| ``/switch/<tag>`` | ``sink.switch[tag]`` (500 until a test sets it) |
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}
def signature_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, with the Standard Webhooks reference library: a ``v1`` signature under
    ``secret`` (``whsec_`` + base64) among the space-separated ones, and a timestamp within 5 minutes."""
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError):
        return False
    return True


def new_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True, slots=True)
class Hit:
    """One request as the sink saw it."""

    path: str
    tag: str
    webhook_id: str | None
    at_s: float  # time.monotonic() when the request was read
    status: int  # what the sink answered (or was about to, for a slow request)
    signature_ok: bool
    body: Any
    headers: dict[str, str]


class Sink:
    """``await Sink(secret).start()``; ``host`` is what NOTIFLOW_WEBHOOK_ALLOWED_HOSTS must name."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.switch: dict[str, int] = {}
        self._hits: list[Hit] = []
        self._seen: Counter[tuple[str, str | None]] = Counter()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, *path: object) -> str:
        return f"http://{self.host}/" + "/".join(str(p) for p in path)

    async def start(self) -> Sink:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    # --- what the tests read ----------------------------------------------------------------

    def hits(self, tag: str) -> list[Hit]:
        return [h for h in self._hits if h.tag == tag]

    def per_delivery(self, tag: str) -> dict[str | None, list[Hit]]:
        """Requests by webhook-id (one id per notification and recipient), in arrival order."""
        out: dict[str | None, list[Hit]] = {}
        for h in self.hits(tag):
            out.setdefault(h.webhook_id, []).append(h)
        return out

    def all_hits(self) -> list[Hit]:
        return list(self._hits)

    # --- HTTP -------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            for _ in range(100_000):  # keep-alive, bounded
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                _method, target, _version = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                status, extra = await self._answer(target, headers, body)
                payload = b'{"ok":true}' if status < 300 else b'{"error":"on purpose"}'
                response = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                    + "\r\n"
                ).encode() + payload
                writer.write(response)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # the client gave up (a timeout) or closed: nothing to answer
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, target: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        path = target.split("?", 1)[0]
        parts = path.strip("/").split("/")
        mode, args, tag = parts[0], parts[1:-1], parts[-1]
        webhook_id = headers.get("webhook-id")
        self._seen[(path, webhook_id)] += 1
        nth = self._seen[(path, webhook_id)]
        status, extra, delay_s = 404, {}, 0.0
        if mode == "ok":
            status = 200
        elif mode == "flaky":
            status = 500 if nth <= int(args[0]) else 200
        elif mode == "dead":
            status = 500
        elif mode == "reject":
            status = 400
        elif mode == "throttle":
            status, extra = (429, {"retry-after": args[1]}) if nth <= int(args[0]) else (200, {})
        elif mode == "slow":
            status, delay_s = 200, float(args[0])
        elif mode == "switch":
            status = self.switch.get(tag, 500)
        try:
            decoded: Any = json.loads(body) if body else None
        except ValueError:
            decoded = body.decode("utf-8", "replace")
        self._hits.append(
            Hit(path, tag, webhook_id, time.monotonic(), status, signature_valid(self.secret, headers, body),
                decoded, headers)
        )
        if delay_s:
            await asyncio.sleep(delay_s)
        return status, extra
