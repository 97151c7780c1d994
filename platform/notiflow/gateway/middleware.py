"""A plain ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): header bound and request
metrics, before any route runs. Authentication is per route (gateway/auth.py)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notiflow import metrics
from notiflow.config import Settings
from notiflow.gateway.http import error_response

MAX_HEADER_BYTES = 16 * 1024


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
        started = time.perf_counter()

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
            if route == "/notifications" and scope["method"] == "POST":
                if status == 202:
                    metrics.ACCEPTED.inc()
                    metrics.INGEST_SECONDS.observe(time.perf_counter() - started)
                else:
                    metrics.REJECTED.labels(str(status)).inc()
