"""A plain ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): header bound and request
metrics, before any route runs. Authentication is per route (gateway/auth.py)."""

from __future__ import annotations

import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notiflow import metrics
from notiflow.config import Settings
from notiflow.gateway.http import error_response

MAX_HEADER_BYTES = 16 * 1024
INGEST_PATHS = ("/notifications", "/notifications/batch")
# Error codes are short snake_case words (a closed set in the code), so the label set stays bounded.
_CODE = re.compile(rb'"code":"([a-z_]{1,40})"')


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            msg = f"request headers exceed {MAX_HEADER_BYTES} bytes"
            await error_response(431, "headers_too_large", msg)(scope, receive, send)
            return
        status = 500
        code = b""
        started = time.perf_counter()
        ingest = scope["method"] == "POST" and scope["path"] in INGEST_PATHS

        async def send_and_count(message: Message) -> None:
            nonlocal status, code
            if message["type"] == "http.response.start":
                status = message["status"]
            elif ingest and status >= 400 and not code and message["type"] == "http.response.body":
                code = message.get("body", b"")[:400]
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
            if ingest:
                if status == 202:
                    metrics.INGEST_SECONDS.observe(time.perf_counter() - started)
                else:
                    metrics.REFUSED.labels(refusal_reason(status, code)).inc()


def refusal_reason(status: int, body: bytes) -> str:
    """The error body's ``code`` (SPEC §2 errors), or ``http_<status>`` when there is none."""
    match = _CODE.search(body)
    return match.group(1).decode() if match else f"http_{status}"
