"""Every route but the probes and the OpenAPI pages needs credentials: a route added without a guard fails
here, before it ships open."""

from __future__ import annotations

import inspect

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute

from notiflow.config import Settings
from notiflow.gateway import auth, dashboard, http, keys, presence, sse, topics, ws
from notiflow.gateway.app import GatewayApp, create_app

OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"}


def _calls(dependant: Dependant) -> set[object]:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def _routes() -> list[object]:
    # The routers' own routes (an app's include_router wraps them in a private type) and the app's.
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    return [*http.router.routes, *keys.router.routes, *dashboard.router.routes, *presence.router.routes,
            *sse.router.routes, *topics.router.routes, *app.routes]


def test_every_route_but_probes_needs_credentials() -> None:
    guarded, open_ = [], []
    for route in _routes():
        if isinstance(route, APIRoute):
            calls = _calls(route.dependant)
            (guarded if auth.principal in calls or auth.page_principal in calls else open_).append(route.path)
    assert set(open_) <= OPEN, f"routes without credentials: {sorted(set(open_) - OPEN)}"
    assert {"/notifications", "/dlq", "/notifications/offline/{user_id}", "/keys", "/dashboard", "/presence/{user_id}",
            "/sse/{user_id}", "/topics/{topic}/subscribers", "/topics/{topic}/subscribers/{user_id}"} <= set(guarded)


def test_only_the_dashboard_page_takes_its_key_from_the_address() -> None:
    """Issue 25, finding 6: ``?token=`` was taken by every route; now only GET /dashboard, GET /sse (EventSource
    sends no headers: issue 23) and /ws."""
    by_query = [route.path for route in _routes()
                if isinstance(route, APIRoute) and auth.page_principal in _calls(route.dependant)]
    assert sorted(by_query) == ["/dashboard", "/sse/{user_id}"]


def test_the_socket_checks_credentials_itself() -> None:
    # The WebSocket endpoint cannot answer 401 (only close codes), so it calls authorize_socket. The app
    # serves it ahead of the router (gateway/app.py: GatewayApp), so no route may serve a socket too.
    assert not [r for r in _routes() if isinstance(r, APIWebSocketRoute)]
    assert "ws.websocket_endpoint(" in inspect.getsource(GatewayApp.__call__)
    assert "authorize_socket(" in inspect.getsource(ws.websocket_endpoint)


def test_only_the_socket_path_reaches_the_endpoint() -> None:
    assert ws.socket_user("/ws/u1") == "u1"
    assert ws.socket_user("/ws/user:42@example.com") == "user:42@example.com"
    for path in ("/ws/", "/ws", "/ws/a/b", "/wsx/u1", "/api/ws/u1", "/ws/u1/"):
        assert ws.socket_user(path) is None, path
