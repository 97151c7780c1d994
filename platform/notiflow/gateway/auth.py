"""Authentication at the transport boundary: FastAPI dependencies for routes, and the socket's check.

Attach ``Depends(require_scope(Scope.ADMIN))`` (or SEND, READ) to a route to restrict it to API keys with
that scope; ``Depends(acting_for_user)`` to a route with a ``{user_id}`` path parameter to admit that
user's own token or a ``read`` key. A route with neither is open: only /healthz, /readyz, /metrics and
the OpenAPI pages are (a test checks this).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security, WebSocket
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from notiflow.credentials import Principal, Scope
from notiflow.errors import Forbidden, Unauthorized
from notiflow.gateway.deps import services
from notiflow.gateway.protocol import CloseCode

# auto_error=False: these only document the two ways in (OpenAPI, /docs); errors are ours (SPEC §2 JSON).
_bearer = HTTPBearer(auto_error=False, description="An API key (`nf_...`) or an end user's JWT.")
_query = APIKeyQuery(name="token", auto_error=False, description="The same, for browsers' WebSockets.")


def bearer_token(conn: HTTPConnection, *, query: bool = False) -> str | None:
    """The token of ``Authorization: Bearer``, or else of ``?token=`` where ``query`` allows it (the
    socket and the dashboard's page, which browsers open without headers); None when there is neither.
    Anywhere else a ``?token=`` is refused with 401: a key in an address ends up in logs and histories."""
    header = conn.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        return value.strip()
    if "token" in conn.query_params and not query:
        raise Unauthorized(
            "?token= is accepted only by /ws, /sse and GET /dashboard: send Authorization: Bearer <token>"
        )
    return conn.query_params.get("token") or None


async def principal(
    request: Request, _header: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Principal:
    """Who is calling, by the Authorization header; 401 when nobody valid is (auth off: anyone). Cached
    per request by FastAPI."""
    return await services(request).auth.authenticate(bearer_token(request))


async def page_principal(
    request: Request,
    _header: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    _query_token: Annotated[str | None, Security(_query)],
) -> Principal:
    """The same for a page a browser opens by its address (GET /dashboard): ``?token=`` is accepted too."""
    return await services(request).auth.authenticate(bearer_token(request, query=True))


def require_scope(scope: Scope, *, query_token: bool = False) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting API keys with ``scope`` (403 for other valid credentials); ``query_token``
    also takes the key from ``?token=`` (GET /dashboard only)."""

    def checked(who: Principal) -> Principal:
        if not who.allows(scope):
            raise Forbidden(f"this needs an API key with the {scope.value!r} scope")
        return who

    async def has_scope(who: Annotated[Principal, Depends(principal)]) -> Principal:
        return checked(who)

    async def page_has_scope(who: Annotated[Principal, Depends(page_principal)]) -> Principal:
        return checked(who)

    return page_has_scope if query_token else has_scope


def require_any_scope(*scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting API keys with at least one of ``scopes`` (403 for other valid credentials)."""
    names = " or ".join(repr(s.value) for s in scopes)

    async def has_one(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not any(who.allows(s) for s in scopes):
            raise Forbidden(f"this needs an API key with the {names} scope")
        return who

    return has_one


async def acting_for_user(user_id: str, who: Annotated[Principal, Depends(principal)]) -> Principal:
    """A dependency for ``/.../{user_id}`` routes: that user's own token, or an API key with ``read``."""
    if not who.may_act_for(user_id):
        raise Forbidden("these credentials may not read or acknowledge this user's notifications")
    return who


async def stream_owner(
    request: Request, user_id: str, who: Annotated[Principal, Depends(page_principal)]
) -> Principal:
    """A dependency for ``GET /sse/{user_id}``: that user's own token (by header, or ``?token=``: EventSource
    sends no headers), or an API key with ``read`` by the Authorization header only (a key in an address ends
    up in logs). A key's stream is re-checked while it runs and ends when the key is revoked (gateway/sse.py)."""
    if not who.may_open_stream(user_id):
        raise Forbidden("an event stream needs that user's token or an API key with the 'read' scope")
    if who.kind == "key" and request.headers.get("authorization") is None:
        raise Unauthorized("an API key opens a stream by Authorization: Bearer, never by ?token=")
    return who


async def authorize_socket(ws: WebSocket, user_id: str) -> Principal | CloseCode:
    """The socket's principal, or the code to close it with: 4401 (no valid token), 4403 (another user's
    token, or an API key: sockets are end users' own, SPEC §7)."""
    try:
        who = await services(ws).auth.authenticate(bearer_token(ws, query=True))
    except Unauthorized:
        return CloseCode.UNAUTHORIZED
    if not who.may_open_socket(user_id):
        return CloseCode.FORBIDDEN
    return who
