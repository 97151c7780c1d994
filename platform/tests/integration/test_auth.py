"""Authentication and authorization on real stores (SPEC §7): scopes, revocation, end users' tokens on the
offline endpoints and the socket, idempotency keys per API key, refusal to start unconfigured, auth off."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
import httpx
import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from helpers import wait_for
from integration_support import Gateways, Socket, SocketFactory, Workers, table_counts, users
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from notiflow.config import Settings
from notiflow.credentials import Scope
from notiflow.devstack import free_port
from notiflow.errors import AuthNotConfigured
from notiflow.service.auth import AuthService, KeyService
from notiflow.store.pool import connect_pool

pytestmark = pytest.mark.timeout(90)

SECRET = "integration-secret-of-at-least-32-bytes!"
BOOTSTRAP = "bootstrap-admin-key"
_BODY = {"event": "auth.test", "payload": {"n": 1}}


async def new_key(keys: KeyService, *scopes: Scope) -> str:
    created = await keys.create(f"k-{uuid.uuid4().hex[:8]}", frozenset(scopes))
    return str(created["key"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def token(user_id: str, *, ttl_s: float = 600, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": user_id, "exp": int(time.time() + ttl_s), **claims}, secret, algorithm="HS256")


def auth_on(**extra: Any) -> dict[str, Any]:
    return {"auth": "on", "jwt_secret": SecretStr(SECRET), "api_keys": [SecretStr(BOOTSTRAP)], **extra}


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return str(body["error"]["code"])


async def test_scopes_decide_who_may_do_what(
    gateways: Gateways, keys: KeyService, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start(**auth_on())
    send, read, admin = [await new_key(keys, s) for s in (Scope.SEND, Scope.READ, Scope.ADMIN)]
    (alice,) = users(1)
    url = f"{gw.url}/notifications"
    body = {**_BODY, "user_id": alice}

    missing = await http.post(url, json=body)
    assert error_code(missing, 401) == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert error_code(await http.post(url, json=body, headers=bearer("nf_unknown_key_0123456789")), 401)
    assert error_code(await http.post(url, json=body, headers={"authorization": f"Basic {send}"}), 401)
    assert error_code(await http.post(url, json=body, headers=bearer(read)), 403) == "forbidden"
    assert error_code(await http.post(url, json=body, headers=bearer(admin)), 403) == "forbidden"
    assert error_code(await http.post(url, json=body, headers=bearer(token(alice))), 403) == "forbidden"
    assert (await table_counts(db))["notifications"] == 0, "a refused request stored something"

    accepted = await http.post(url, json=body, headers=bearer(send))
    assert accepted.status_code == 202, accepted.text
    nid = accepted.json()["id"]
    assert (await http.post(url, json=body, headers=bearer(BOOTSTRAP))).status_code == 202  # every scope

    one = f"{gw.url}/notifications/{nid}"
    assert error_code(await http.get(one, headers=bearer(send)), 403) == "forbidden"
    assert (await http.get(one, headers=bearer(read))).status_code == 200
    assert error_code(await http.get(f"{gw.url}/dlq", headers=bearer(send)), 403) == "forbidden"
    assert error_code(await http.get(f"{gw.url}/dlq", headers=bearer(read)), 403) == "forbidden"
    assert error_code(await http.post(f"{gw.url}/dlq/1/replay", headers=bearer(send)), 403) == "forbidden"
    assert error_code(await http.delete(f"{gw.url}/dlq/1", headers=bearer(read)), 403) == "forbidden"
    assert (await http.get(f"{gw.url}/dlq", headers=bearer(admin))).status_code == 200
    # Probes need nothing.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await http.get(f"{gw.url}{path}")).status_code == 200, path


async def test_a_revoked_key_stops_working_at_once_on_every_gateway(
    gateways: Gateways, keys: KeyService, http: httpx.AsyncClient
) -> None:
    first, second = await gateways.start(**auth_on()), await gateways.start(**auth_on())
    created = await keys.create("to-revoke", frozenset({Scope.SEND}))
    key = str(created["key"])
    body = {**_BODY, "user_id": users(1)[0]}
    for gw in (first, second):
        assert (await http.post(f"{gw.url}/notifications", json=body, headers=bearer(key))).status_code == 202
    assert await keys.revoke("to-revoke")
    for gw in (first, second):
        refused = await http.post(f"{gw.url}/notifications", json=body, headers=bearer(key))
        assert error_code(refused, 401) == "invalid_key"
    listed = {k["name"]: k for k in await keys.list(include_revoked=True)}
    assert listed["to-revoke"]["revoked_at"] is not None
    assert "key" not in listed["to-revoke"] and not any(str(v) == key for v in listed["to-revoke"].values())
    # Its name is free again, for a new key with another secret.
    assert (await keys.create("to-revoke", frozenset({Scope.SEND})))["key"] != key


async def test_offline_endpoints_admit_the_user_and_read_keys_only(
    gateways: Gateways, workers: Workers, keys: KeyService, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start(**auth_on())
    await workers.stream()
    alice, bob = users(2)
    send, read = await new_key(keys, Scope.SEND), await new_key(keys, Scope.READ)
    sent = await http.post(f"{gw.url}/notifications", json={**_BODY, "user_id": bob}, headers=bearer(send))
    nid = sent.json()["id"]
    queue, ack = f"{gw.url}/notifications/offline/{bob}", f"{gw.url}/notifications/offline/{bob}/ack"

    assert error_code(await http.get(queue), 401) == "unauthorized"
    assert error_code(await http.get(queue, headers=bearer(token(alice))), 403) == "forbidden"
    # ?token= is for sockets and the dashboard's page only (issue 25, finding 6): here it is no credential.
    assert error_code(await http.get(queue, params={"token": token(bob)}), 401) == "unauthorized"
    assert error_code(await http.get(queue, headers=bearer(send)), 403) == "forbidden"
    expired = token(bob, ttl_s=-60)  # past the 10 s leeway
    assert error_code(await http.get(queue, headers=bearer(expired)), 401) == "token_expired"
    assert error_code(await http.get(queue, headers=bearer(token(bob, secret="x" * 40))), 401) == "invalid_token"
    unsigned = jwt.encode({"sub": bob, "exp": int(time.time()) + 600}, None, algorithm="none")
    assert error_code(await http.get(queue, headers=bearer(unsigned)), 401) == "invalid_token"
    no_exp = jwt.encode({"sub": bob}, SECRET, algorithm="HS256")
    assert error_code(await http.get(queue, headers=bearer(no_exp)), 401) == "invalid_token"

    for who in (token(bob), read):
        page = await http.get(queue, headers=bearer(who))
        assert page.status_code == 200, page.text
        assert [n["id"] for n in page.json()["notifications"]] == [nid]

    # Alice may not acknowledge Bob's queue: nothing changes.
    refused = await http.post(ack, json={"up_to_seq": 10**6}, headers=bearer(token(alice)))
    assert error_code(refused, 403) == "forbidden"
    status = await db.fetchval("SELECT status FROM deliveries WHERE notification_id = $1", uuid.UUID(nid))
    assert status != "delivered"
    done = await http.post(ack, json={"ids": [nid]}, headers=bearer(token(bob)))
    assert done.status_code == 200 and done.json() == {"acknowledged": 1}, done.text


async def rds_presence_empty(settings: Settings, user_id: str) -> bool:
    client = aioredis.from_url(settings.redis_url_required)
    try:
        return not await client.exists(settings.key("presence", user_id))
    finally:
        await client.aclose()


async def _refused(socket: SocketFactory, url: str, user_id: str, headers: dict[str, str] | None = None) -> int | None:
    sock: Socket = await socket(url, user_id, sync=False, additional_headers=headers or {})
    code = await sock.close_code()
    assert sock.frames == [] and sock.others == [], "a refused socket was sent something"
    return code


async def test_sockets_need_the_users_token(
    gateways: Gateways, workers: Workers, keys: KeyService, http: httpx.AsyncClient, socket: SocketFactory
) -> None:
    gw = await gateways.start(**auth_on())
    await workers.stream()
    alice, bob = users(2)
    read, send = await new_key(keys, Scope.READ), await new_key(keys, Scope.SEND)
    assert await _refused(socket, gw.url, bob) == 4401
    for bad, code in ((token(bob, secret="y" * 40), 4401), (token(bob, ttl_s=-60), 4401), ("nf_nope", 4401),
                      (token(alice), 4403), (send, 4403), (read, 4403)):
        assert await _refused(socket, gw.url, bob, bearer(bad)) == code, bad
    # Browsers cannot set headers on a WebSocket: ?token= works the same.
    async with connect(f"{gw.ws_url(bob)}?token={token(alice)}", proxy=None) as conn:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(conn.recv(), timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    assert await rds_presence_empty(gw.settings, bob), "a refused socket was registered in presence"

    own = await socket(gw, bob, additional_headers=bearer(token(bob)))
    sent = await http.post(f"{gw.url}/notifications", json={**_BODY, "user_id": bob}, headers=bearer(send))
    nid = sent.json()["id"]
    await own.wait_ids([nid])


async def test_a_socket_closes_with_4401_when_its_token_expires(
    gateways: Gateways, socket: SocketFactory
) -> None:
    gw = await gateways.start(**auth_on(jwt_leeway_s=0))
    (carol,) = users(1)
    expires = time.time() + 2
    short = jwt.encode({"sub": carol, "exp": int(expires) + 1}, SECRET, algorithm="HS256")
    sock = await socket(gw, carol, additional_headers=bearer(short))  # open and registered
    assert await sock.close_code(timeout_s=10) == 4401
    assert time.time() >= int(expires) + 1 - 0.05, "closed before the token's exp"


async def test_idempotency_keys_belong_to_the_api_key_that_used_them(
    gateways: Gateways, keys: KeyService, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start(**auth_on())
    one, two = await new_key(keys, Scope.SEND), await new_key(keys, Scope.SEND)
    body = {**_BODY, "user_id": users(1)[0]}
    url = f"{gw.url}/notifications"

    async def send(key: str) -> str:
        r = await http.post(url, json=body, headers={**bearer(key), "idempotency-key": "order-1"})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    first, again, other = await send(one), await send(one), await send(two)
    assert first == again, "the same producer's retry created a second notification"
    assert other != first, "another producer's key collided with the first one's"
    assert (await table_counts(db))["notifications"] == 2


def _run_gateway(settings: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m notiflow gateway` with only ``env`` for auth; it must exit on its own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "notiflow", "gateway", "--port", str(free_port())],
        env={**clean, "NOTIFLOW_REDIS_URL": settings.redis_url_required,
             "NOTIFLOW_DATABASE_URL": settings.database_url_required, **env},
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )


def test_notiflow_gateway_refuses_to_start_with_no_way_to_authenticate(settings: Settings) -> None:
    done = _run_gateway(settings)
    assert done.returncode != 0
    assert "refuses to start" in done.stderr and "NOTIFLOW_AUTH=off" in done.stderr, done.stderr[-2000:]
    short = _run_gateway(settings, NOTIFLOW_JWT_SECRET="short")  # brute-forceable from one token
    assert short.returncode != 0 and "at least 32 bytes" in short.stderr, short.stderr[-2000:]


async def test_a_stored_key_is_a_way_in(settings: Settings, keys: KeyService) -> None:
    pool = await connect_pool(settings.database_url_required, max_size=1)
    try:
        with pytest.raises(AuthNotConfigured):
            await AuthService(settings.model_copy(update={"auth": None}), pool).start()
        await keys.create("only-key", frozenset({Scope.SEND}))
        auth = AuthService(settings.model_copy(update={"auth": None}), pool)
        await auth.start()
        await auth.close(1)
    finally:
        await pool.close()


async def test_auth_off_is_announced_and_repeated(gateways: Gateways, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="notiflow.gateway.app")
    await gateways.start(auth="off", auth_off_warning_s=0.2)
    await wait_for(lambda: sum("authentication is OFF" in r.getMessage() for r in caplog.records) >= 3,
                   message="the auth-off warning is logged at start and then every auth_off_warning_s")


async def test_credentials_never_reach_the_logs(stack: Any, http: httpx.AsyncClient) -> None:
    """A real gateway process at its most verbose level. (uvicorn's access lines, which name URLs with
    ?token=, are kept off; the formatter masks credentials anyway, see unit/test_credentials.py.)"""
    dev = stack(stream_workers=0, retry_workers=0, log_level="DEBUG", **auth_on())
    base = dev.gateway_urls[0]
    (dora,) = users(1)
    user_token = token(dora)
    queue = f"{base}/notifications/offline/{dora}"
    assert (await http.get(queue, params={"token": user_token})).status_code == 401  # only /ws and /dashboard
    assert (await http.get(queue, headers=bearer(user_token))).status_code == 200
    assert (await http.get(f"{base}/dlq", headers=bearer(BOOTSTRAP))).status_code == 200
    async with connect(f"{base.replace('http://', 'ws://')}/ws/{dora}?token={user_token}", proxy=None) as conn:
        await conn.send('{"type":"ping"}')
        assert "pong" in str(await asyncio.wait_for(conn.recv(), timeout=10))
    dev.stop()  # flushes and closes the log
    text = dev.supervisor.log_path("gateway-0").read_text()
    assert '"level":"debug"' in text, "the gateway did not log at debug level (this test would prove nothing)"
    assert user_token not in text and BOOTSTRAP not in text and SECRET not in text


def test_keys_cli_creates_lists_and_revokes(settings: Settings) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFLOW_")}
        return subprocess.run([sys.executable, "-m", "notiflow", "keys", *args], capture_output=True, text=True,
                              env={**clean, "NOTIFLOW_DATABASE_URL": settings.database_url_required},
                              timeout=60, check=False, stdin=subprocess.DEVNULL)

    created = cli("create", "--name", "cli-key", "--scopes", "send,read")
    assert created.returncode == 0, created.stderr
    row = orjson.loads(created.stdout)
    assert row["key"].startswith("nf_") and sorted(row["scopes"]) == ["read", "send"]
    assert "shown once" in created.stderr
    assert cli("create", "--name", "cli-key", "--scopes", "send").returncode == 1  # a live key has that name
    assert cli("create", "--name", "x", "--scopes", "write").returncode == 2
    listed = cli("list")
    assert "cli-key" in listed.stdout and row["key"] not in listed.stdout and row["key"][:9] in listed.stdout
    assert cli("revoke", "cli-key").returncode == 0
    assert cli("revoke", "cli-key").returncode == 1
    assert "cli-key" not in cli("list").stdout and "cli-key" in cli("list", "--all").stdout
