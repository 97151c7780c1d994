"""Issue 25, findings 4-8, on real stores: sockets are end users' own (never an API key's), requests have a
concurrency bound (request heads' deadline is the reverse proxy's: docs/security.md), ``?token=`` only where a
browser needs it, security headers and the Host check on every answer, and the JWT audience and lifetime
policy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from contextlib import AsyncExitStack
from typing import Any

import httpx
import jwt
import pytest
from helpers import wait_for
from integration_support import Gateway, Gateways, SocketFactory, Workers, users
from pydantic import SecretStr
from websockets.asyncio.client import connect

from notiflow.credentials import Scope
from notiflow.service.auth import KeyService
from notiflow.store.pool import connect_pool

pytestmark = pytest.mark.timeout(120)

SECRET = "abuse-guards-secret-of-at-least-32-bytes"
ADMIN = "abuse-guards-admin-key"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def token(user_id: str, *, ttl_s: float = 600, **claims: Any) -> str:
    return jwt.encode({"sub": user_id, "exp": int(time.time() + ttl_s), **claims}, SECRET, algorithm="HS256")


def auth_on(**extra: Any) -> dict[str, Any]:
    return {"auth": "on", "jwt_secret": SecretStr(SECRET), "api_keys": [SecretStr(ADMIN)], **extra}


def code_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, f"{response.request.url}: {response.status_code} {response.text}"
    return str(response.json()["error"]["code"])


async def read_key(gw: Gateway) -> str:
    pool = await connect_pool(gw.settings.database_url_required, max_size=1)
    try:
        created = await KeyService(pool).create(f"reader-{users(1)[0]}", frozenset({Scope.READ}))
    finally:
        await pool.close()
    return str(created["key"])


# --- finding 4: sockets are end users' own --------------------------------------------------------


async def test_an_api_key_cannot_open_a_socket_nor_fill_the_users_cap(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, socket: SocketFactory
) -> None:
    """Before: a ``read`` key's socket was served (and outlived the key's revocation), and ten of them made
    the user's own token get 4429."""
    gw = await gateways.start(**auth_on(ws_max_sockets_per_user=2))
    await workers.stream()
    (dave,) = users(1, "dave")
    reader = await read_key(gw)
    for cred in (reader, reader, reader, ADMIN):  # one more than the cap, and a key holding every scope
        sock = await socket(gw, dave, sync=False, additional_headers=bearer(cred))
        assert await sock.close_code() == 4403, "an API key's socket must be refused with 4403"
        assert sock.frames == [] and sock.others == [], "a refused socket was sent something"
    own = [await socket(gw, dave, additional_headers=bearer(token(dave))) for _ in range(2)]  # the whole cap
    sent = await http.post(f"{gw.url}/notifications", json={"user_id": dave, "event": "e"}, headers=bearer(ADMIN))
    assert sent.status_code == 202, sent.text
    for sock in own:
        await sock.wait_ids([sent.json()["id"]])


# --- finding 5: request heads have a deadline, requests a bound ---------------------------------------


async def test_requests_over_the_concurrency_bound_get_503(gateways: Gateways) -> None:
    """Before: no limit_concurrency was set; any number of connections and requests was taken on."""
    gw = await gateways.start(ws_max_sockets=1, http_max_concurrency=2)
    async with AsyncExitStack() as held:
        for _ in range(3):  # idle connections count: with them the bound (1 + 2) is reached
            _, writer = await asyncio.open_connection("127.0.0.1", gw.settings.port)
            held.callback(writer.close)
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"{gw.url}/healthz")).status_code == 503
    async with httpx.AsyncClient(trust_env=False) as client:

        async def served() -> bool:
            return (await client.get(f"{gw.url}/healthz")).status_code == 200

        await wait_for(served, timeout_s=20, message="the bound frees up when the connections go")


# --- finding 6: ?token= only on /ws and GET /dashboard ------------------------------------------------


async def test_query_tokens_are_accepted_only_by_sockets_and_the_dashboard_page(
    gateways: Gateways, socket: SocketFactory, http: httpx.AsyncClient
) -> None:
    """Before: ``POST /keys?token=<admin>`` answered 201, and every route took ``?token=``."""
    gw = await gateways.start(**auth_on())
    (bob,) = users(1, "bob")
    created = await http.post(f"{gw.url}/keys", params={"token": ADMIN}, json={"name": "q", "scopes": ["send"]})
    assert code_of(created, 401) == "unauthorized" and "?token=" in created.json()["error"]["message"]
    for method, path, cred in (("GET", "/dlq", ADMIN), ("GET", "/keys", ADMIN), ("GET", "/dashboard/stats", ADMIN),
                               ("GET", f"/notifications/offline/{bob}", token(bob))):
        assert code_of(await http.request(method, f"{gw.url}{path}", params={"token": cred}), 401), path
        assert (await http.request(method, f"{gw.url}{path}", headers=bearer(cred))).status_code == 200, path

    page = await http.get(f"{gw.url}/dashboard", params={"token": ADMIN})
    assert page.status_code == 200, page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert 'history.replaceState(null, "", location.pathname)' in page.text, "the key stays in the address bar"
    async with connect(f"{gw.ws_url(bob)}?token={token(bob)}", proxy=None) as conn:  # browsers' sockets
        await conn.send('{"type":"ping"}')
        assert "pong" in str(await asyncio.wait_for(conn.recv(), timeout=10))


# --- finding 7: headers, /docs, Host ---------------------------------------------------------------


async def test_every_answer_carries_the_security_headers(gateways: Gateways, http: httpx.AsyncClient) -> None:
    """Before: no X-Frame-Options, frame-ancestors, X-Content-Type-Options or Referrer-Policy anywhere, and
    /docs loaded swagger-ui from a CDN by default."""
    gw = await gateways.start(**auth_on())
    answers = [await http.get(f"{gw.url}{path}", headers=bearer(ADMIN))
               for path in ("/healthz", "/openapi.json", "/nowhere", "/dashboard", "/dlq")]
    answers.append(await http.get(f"{gw.url}/dlq"))  # a 401
    for r in answers:
        where = f"{r.request.url.path} ({r.status_code})"
        assert r.headers.get("x-frame-options") == "DENY", where
        assert r.headers.get("x-content-type-options") == "nosniff", where
        assert r.headers.get("referrer-policy") == "no-referrer", where
        assert "frame-ancestors 'none'" in r.headers.get("content-security-policy", ""), where
    assert answers[1].headers["content-security-policy"].startswith("default-src 'none'")
    page = answers[3]
    script = re.search(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    policy = page.headers["content-security-policy"]
    assert f"script-src 'sha256-{digest}';" in policy and "connect-src 'self'" in policy, policy
    assert (await http.get(f"{gw.url}/docs")).status_code == 404, "/docs (CDN script) must be off by default"
    with_docs = await gateways.start(api_docs=True)
    docs = await http.get(f"{with_docs.url}/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]


async def test_the_host_header_is_checked(gateways: Gateways, http: httpx.AsyncClient) -> None:
    """Before: any Host was served (a DNS-rebinding page could reach a loopback gateway by its own name)."""
    gw = await gateways.start()
    port = gw.settings.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert (await http.get(f"{gw.url}/dlq", headers={"host": host})).status_code == 200, host
    for host in (f"rebind.example:{port}", "127.0.0.1.nip.example", "evil.example"):
        assert code_of(await http.get(f"{gw.url}/dlq", headers={"host": host}), 400) == "invalid_host", host
    for probe in ("/healthz", "/metrics"):  # scrapers and orchestrators address a process by its IP
        assert (await http.get(f"{gw.url}{probe}", headers={"host": "10.1.2.3:8000"})).status_code == 200
    assert await handshake_status(port, "rebind.example") == b"403"
    assert await handshake_status(port, f"127.0.0.1:{port}") == b"101"
    anyone = await gateways.start(allowed_hosts=["*"])
    assert (await http.get(f"{anyone.url}/dlq", headers={"host": "evil.example"})).status_code == 200


async def handshake_status(port: int, host: str) -> bytes:
    """The status code a WebSocket handshake to /ws/alice with ``Host: host`` is answered with (raw: a
    client library sends the Host of its URL)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /ws/alice HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
    return status_line.split()[1]


# --- finding 8: JWT audience and lifetime ----------------------------------------------------------


async def test_tokens_for_another_audience_or_too_long_a_life_are_refused(
    gateways: Gateways, socket: SocketFactory, http: httpx.AsyncClient
) -> None:
    """Before: a token naming another service's ``aud`` and one expiring in the year 3000 were accepted."""
    gw = await gateways.start(**auth_on(jwt_max_lifetime_s=3600))
    (erin,) = users(1, "erin")
    queue = f"{gw.url}/notifications/offline/{erin}"
    now = int(time.time())
    for bad in (token(erin, aud="billing-service"), token(erin, ttl_s=32503680000 - now),
                token(erin, ttl_s=7200, iat=now)):
        assert code_of(await http.get(queue, headers=bearer(bad)), 401) == "invalid_token"
        sock = await socket(gw, erin, sync=False, additional_headers=bearer(bad))
        assert await sock.close_code() == 4401
    assert (await http.get(queue, headers=bearer(token(erin, ttl_s=3600, iat=now)))).status_code == 200
