"""The gateway application: create_app() and the lifespan that opens and closes every resource."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from notiflow import metrics, roles
from notiflow.config import Settings
from notiflow.errors import (
    ApiError,
    AuthNotConfigured,
    BackpressureError,
    CommitOutcomeUnknown,
    RateLimited,
    StoreBusy,
    StoreUnavailable,
    Unauthorized,
)
from notiflow.gateway import dashboard, http, keys, openapi, presence, responses, sse, topics, ws
from notiflow.gateway.deps import Services
from notiflow.gateway.hub import Hub
from notiflow.gateway.middleware import Guard
from notiflow.gateway.openfiles import check_open_files, open_files_limit
from notiflow.gateway.security import header_host, host_allowed, served_hosts
from notiflow.lifecycle import Deadline, cancel
from notiflow.service.ports import Wrappers
from notiflow.service.wiring import gateway_services

log = logging.getLogger(__name__)

AUTH_OFF_WARNING = (
    "authentication is OFF (NOTIFLOW_AUTH=off): anyone who reaches this gateway can send, read and delete"
)


async def _warn_while_auth_off(period_s: float) -> None:
    while True:
        log.warning(AUTH_OFF_WARNING)
        await asyncio.sleep(period_s)


@asynccontextmanager
async def _services(settings: Settings, wrap: Wrappers, hub: Hub) -> AsyncIterator[Services]:
    """The gateway's services on its stores (service/wiring.py), not started yet; the stores are closed on the
    way out. With authentication on and no key configured, the gateway refuses to start (stores closed)."""
    try:
        async with gateway_services(settings, wrap, hub) as services:
            yield Services.of(services, hub)
    except AuthNotConfigured as exc:  # raised only on the way in (AuthService.start)
        log.error("gateway refuses to start: %s", exc)
        raise


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with _services(settings, app.state.wrappers, Hub()) as services:
        app.state.services = services
        auth_off = services.auth.off
        warner = asyncio.create_task(_warn_while_auth_off(settings.auth_off_warning_s)) if auth_off else None
        await services.start()
        check_open_files(open_files_limit(), settings.ws_max_sockets)
        log.info("gateway ready", extra={"host": settings.host, "port": settings.port})
        try:
            yield
        finally:
            # Stop intake first (no new accepts), drain what is queued, then release the stores. Stage 1,
            # uvicorn finishing the requests in flight, and these drains (stage 2) share one grace period, begun
            # by stop_serving (the order of the drains: GatewayServices.close). The stores close on leaving
            # _services, within a bound of their own: a connection never given back is cut.
            await services.close(app.state.stop_deadline or Deadline(settings.shutdown_grace_s))
            if warner is not None:
                await cancel([warner])


def stop_serving(app: FastAPI, server: uvicorn.Server) -> None:
    """Begin a gateway's stop: its one grace period starts now. Stage 1, uvicorn stops accepting and
    finishes the requests in flight (within the same ``timeout_graceful_shutdown``); stage 2, the lifespan's
    drains, gets what is left of the period rather than a period of its own."""
    app.state.stop_deadline = Deadline(app.state.settings.shutdown_grace_s)
    server.should_exit = True


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options from the settings, public ones only: the HTTP implementation, keep-alive and the
    concurrency bound, and for WebSockets the implementation, keepalive pings, the frame size bound (enforced by
    the websockets parser on the frame header, before the payload is read: 1009) and compression. Every way of
    serving the app uses these. uvicorn arms no deadline on a request's line and headers (its keep-alive timer
    stops at a request's first byte): the reverse proxy in front provides one (docs/security.md)."""
    return {
        "http": "httptools",
        "timeout_keep_alive": settings.http_keep_alive_s,
        # uvicorn counts open sockets as connections too: the HTTP bound comes on top of the sockets' own.
        "limit_concurrency": settings.ws_max_sockets + settings.http_max_concurrency,
        "ws": "websockets-sansio",
        "ws_ping_interval": settings.ws_ping_interval_s,
        "ws_ping_timeout": settings.ws_ping_timeout_s,
        "ws_max_size": settings.ws_max_frame_bytes,
        "ws_per_message_deflate": settings.ws_permessage_deflate,
    }


class GatewayApp(FastAPI):
    """FastAPI, with the WebSocket endpoint (``/ws/{user_id}``) served ahead of the middleware stack and the
    router. A socket's ASGI call lasts as long as the socket, and everything on its way stays alive with it:
    through FastAPI's stack that was about 15 coroutine frames, three AsyncExitStacks and the scope's copies,
    12.5 kB per idle socket (RSS 28.6 -> 16.1 kB, one gateway process with 1,000 sockets). Nothing on that
    way acts on a socket (the middlewares pass WebSocket scopes through; the endpoint raises nothing for
    them to handle). Any other WebSocket path goes the router's way (no route: the handshake is refused). A
handshake whose Host is not allowed (security.py) is refused here, for every path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            if not host_allowed(header_host(scope["headers"]), self.state.allowed_hosts):
                await WebSocket(scope, receive, send).close(1008)  # before accept: the handshake is answered 403
                return
            path: str = scope["path"]
            root = scope.get("root_path", "")
            user_id = ws.socket_user(path[len(root):] if root and path.startswith(root) else path)
            if user_id is not None:
                scope["app"] = self
                await ws.websocket_endpoint(scope, receive, send, user_id)
                return
        await super().__call__(scope, receive, send)


def _handle_errors(app: FastAPI) -> None:
    """Every error a route lets out answers as the API's error body (responses.py), with its status."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        # RFC 6750: a 401 names the scheme the client should use.
        headers = {"www-authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return http.JSON(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(BackpressureError)
    async def backpressure(_: Request, exc: BackpressureError) -> Response:
        retry = str(max(1, math.ceil(exc.retry_after_s or 1)))
        code = "rate_limited" if isinstance(exc, RateLimited) else "backlog_full"
        return http.error_response(429, code, str(exc), headers={"retry-after": retry})

    @app.exception_handler(CommitOutcomeUnknown)
    async def outcome_unknown(_: Request, exc: CommitOutcomeUnknown) -> Response:
        log.warning("commit outcome unknown", extra={"error": str(exc)})
        return http.error_response(
            503, "outcome_unknown",
            "the store failed while committing: the request may have been accepted; retry with the same "
            "Idempotency-Key", headers={"retry-after": "1"},
        )

    @app.exception_handler(StoreBusy)
    async def busy(_: Request, exc: StoreBusy) -> Response:
        log.warning("store busy", extra={"error": str(exc)})
        return http.error_response(
            503, "store_busy",
            "a record this request needs stayed locked by another transaction (NOTIFLOW_PG_LOCK_TIMEOUT_MS): "
            "nothing was stored; retry", headers={"retry-after": "1"},
        )

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_: Request, exc: StoreUnavailable) -> Response:
        log.warning("store unavailable", extra={"error": str(exc)})
        return http.error_response(503, "unavailable", "a store is unavailable; retry", headers={"retry-after": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return http.error_response(422, "invalid_request", "request is invalid", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return http.error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return http.error_response(500, "internal_error", "internal error")


def _serve_metrics(app: FastAPI) -> None:
    @app.get("/metrics", responses=responses.METRICS, response_class=PlainTextResponse)
    async def metrics_endpoint() -> Response:
        hub = app.state.services.hub
        metrics.SOCKETS.set(hub.sockets())
        metrics.USERS.set(len(hub.users()))
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, *, wrappers: Wrappers | None = None) -> FastAPI:
    """The gateway app; ``wrappers``: around the adapters its lifespan builds (service/ports.py), none by default."""
    app = GatewayApp(title="notiflow", version="0.1.0", lifespan=lifespan,
                     docs_url="/docs" if settings.api_docs else None, redoc_url=None)
    app.state.settings = settings
    app.state.wrappers = wrappers or Wrappers()
    app.state.allowed_hosts = served_hosts(settings.allowed_hosts, settings.host)
    app.state.stop_deadline = None  # set by stop_serving
    app.include_router(http.router)
    app.include_router(dashboard.router)
    app.include_router(keys.router)
    app.include_router(presence.router)
    app.include_router(sse.router)
    app.include_router(topics.router)
    app.add_middleware(Guard, settings=roles.gateway(settings))
    _handle_errors(app)
    _serve_metrics(app)
    openapi.document(app, auth_off=settings.auth == "off")
    return app
