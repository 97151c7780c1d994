"""A plain ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): header bound, Host check,
security headers (security.py) and request metrics, before any route runs. Authentication is per route
(gateway/auth.py)."""

from __future__ import annotations

import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notiflow import metrics
from notiflow.gateway import dashboard
from notiflow.gateway.http import error_response
from notiflow.gateway.security import PROBES, header_host, host_allowed, page_csp, security_headers, served_hosts
from notiflow.roles import GatewaySettings

MAX_HEADER_BYTES = 16 * 1024
INGEST_PATHS = ("/notifications", "/notifications/batch")
# Error codes are short snake_case words (a closed set in the code), so the label set stays bounded.
_CODE = re.compile(rb'"code":"([a-z_]{1,40})"')


class Guard:
    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.allowed_hosts = served_hosts(settings.allowed_hosts, settings.host)
        self.dashboard_csp = page_csp(dashboard.page())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(scope["path"], self.dashboard_csp)
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            msg = f"request headers exceed {MAX_HEADER_BYTES} bytes"
            await error_response(431, "headers_too_large", msg, headers=dict(_text(extra)))(scope, receive, send)
            return
        if scope["path"] not in PROBES and not host_allowed(header_host(scope["headers"]), self.allowed_hosts):
            msg = "the Host header names no host this gateway serves (NOTIFLOW_ALLOWED_HOSTS)"
            await error_response(400, "invalid_host", msg, headers=dict(_text(extra)))(scope, receive, send)
            return
        status = 500
        code = b""
        started = time.perf_counter()
        ingest = scope["method"] == "POST" and scope["path"] in INGEST_PATHS

        async def send_and_count(message: Message) -> None:
            nonlocal status, code
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
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


def _text(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode(), v.decode()) for k, v in headers]


def refusal_reason(status: int, body: bytes) -> str:
    """The error body's ``code`` (SPEC §2 errors), or ``http_<status>`` when there is none."""
    match = _CODE.search(body)
    return match.group(1).decode() if match else f"http_{status}"
