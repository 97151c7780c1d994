"""I11 security (SPEC §7, issue 10): no one reads, acknowledges or operates what is not theirs.

Black-box, over HTTP and WebSocket only. Self-started: a dedicated cluster (two gateways) with a JWT secret
and a bootstrap admin key made up for the run. Against ``--base-url``: give ``--admin-key`` (a key holding
every scope) and ``--jwt-secret`` (the deployment's NOTIFLOW_JWT_SECRET), else the module is skipped.
Scoped keys are created and revoked through ``/keys`` with the admin key.

Sections: authentication and authorization (this file); abuse limits, frames and webhooks are in
``test_i11_limits.py``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conformance.cluster import Target

pytestmark = pytest.mark.timeout(120)


@dataclass
class Secured:
    """A deployment with authentication on, and what this suite needs to speak to it."""

    urls: list[str]
    admin_key: str
    jwt_secret: str

    def token(self, user_id: str, *, ttl_s: float = 600, secret: str | None = None, **claims: Any) -> str:
        exp = int(time.time() + ttl_s)
        return jwt.encode({"sub": user_id, "exp": exp, **claims}, secret or self.jwt_secret, algorithm="HS256")

    def ws(self, url: str, user_id: str, token: str | None = None) -> str:
        query = f"?token={token}" if token is not None else ""
        return f"{url.replace('http://', 'ws://', 1)}/ws/{user_id}{query}"


@pytest.fixture(scope="module")
def secured(
    base_urls: list[str], start_cluster: Callable[..., Target], pytestconfig: pytest.Config
) -> Iterator[Secured]:
    if base_urls:
        admin, secret = pytestconfig.getoption("--admin-key"), pytestconfig.getoption("--jwt-secret")
        if not (admin and secret):
            pytest.skip("I11 against --base-url needs --admin-key and --jwt-secret")
        yield Secured(base_urls, admin, secret)
        return
    admin, secret = f"conf-admin-{secrets.token_urlsafe(24)}", secrets.token_urlsafe(32)
    target = start_cluster(
        "it runs with authentication on", gateways=2, stream_workers=1, retry_workers=0,
        env={"NOTIFLOW_JWT_SECRET": secret, "NOTIFLOW_API_KEYS": admin},
    )  # fmt: skip
    try:
        yield Secured(target.urls, admin, secret)
    finally:
        target.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def api(secured: Secured) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0), trust_env=False) as client:
        made = Api(client, secured)
        try:
            yield made
        finally:
            await made.revoke_all()


class Api:
    """The suite's HTTP side: requests with a given credential, and keys made (and revoked) for the test."""

    def __init__(self, http: httpx.AsyncClient, secured: Secured) -> None:
        self.http = http
        self.s = secured
        self.url = secured.urls[0]
        self._made: list[str] = []

    async def call(self, method: str, path: str, cred: str | None = None, url: str | None = None,
                   **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {cred}"} if cred is not None else {}
        return await self.http.request(method, f"{url or self.url}{path}", headers=headers, **kwargs)

    async def key(self, *scopes: str) -> tuple[str, str]:
        name = f"conf-{'-'.join(scopes)}-{secrets.token_hex(4)}"
        r = await self.call("POST", "/keys", self.s.admin_key, json={"name": name, "scopes": list(scopes)})
        assert r.status_code == 201, r.text
        self._made.append(name)
        return name, str(r.json()["key"])

    async def send(self, cred: str, user_id: str, **headers: str) -> httpx.Response:
        body = {"user_id": user_id, "event": "i11.test", "payload": {"u": user_id}}
        return await self.http.post(f"{self.url}/notifications", json=body,
                                    headers={"authorization": f"Bearer {cred}", **headers})

    async def revoke_all(self) -> None:
        for name in self._made:
            await self.call("DELETE", f"/keys/{name}", self.s.admin_key)


def refused(r: httpx.Response, status: int) -> str:
    """The SPEC §2 error code of a refusal with ``status``."""
    assert r.status_code == status, f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}"
    body = r.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return str(body["error"]["code"])


async def socket_outcome(url: str, timeout_s: float = 10.0) -> tuple[int | None, list[str]]:
    """Open a socket, send a ping, and read until it closes: (close code, every frame received)."""
    frames: list[str] = []
    async with connect(url, open_timeout=10, proxy=None) as conn:
        try:
            await conn.send('{"type":"ping"}')
            async with asyncio.timeout(timeout_s):
                while True:
                    frames.append(str(await conn.recv()))
        except ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd is not None else None), frames
        except TimeoutError:
            return None, frames


def user(tag: str) -> str:
    return f"i11-{tag}-{secrets.token_hex(4)}"


# --- authentication and authorization ------------------------------------------------------------


async def test_no_credentials_is_401_everywhere_but_the_probes(api: Api) -> None:
    bob = user("bob")
    for method, path in (("POST", "/notifications"), ("GET", f"/notifications/{'0' * 8}-0000-0000-0000-{'0' * 12}"),
                         ("GET", f"/notifications/offline/{bob}"), ("POST", f"/notifications/offline/{bob}/ack"),
                         ("GET", "/dlq"), ("POST", "/dlq/1/replay"), ("DELETE", "/dlq/1"), ("GET", "/keys")):
        r = await api.call(method, path, json={})
        assert refused(r, 401) and r.headers.get("www-authenticate") == "Bearer", (method, path)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await api.call("GET", path)).status_code == 200, path
    code, frames = await socket_outcome(api.s.ws(api.url, bob))
    assert (code, frames) == (4401, []), "a socket without a token must close 4401 before anything is sent"


async def test_each_scope_allows_its_endpoints_only(api: Api) -> None:
    (_, send), (_, read), (_, admin) = await api.key("send"), await api.key("read"), await api.key("admin")
    bob = user("bob")
    accepted = await api.send(send, bob)
    assert accepted.status_code == 202, accepted.text
    nid = accepted.json()["id"]
    for cred in (read, admin, api.s.token(bob)):
        assert refused(await api.send(cred, bob), 403) == "forbidden"
    for cred in (send, admin, api.s.token(bob)):
        assert refused(await api.call("GET", f"/notifications/{nid}", cred), 403) == "forbidden"
    assert (await api.call("GET", f"/notifications/{nid}", read)).status_code == 200
    for cred in (send, read, api.s.token(bob)):
        assert refused(await api.call("GET", "/dlq", cred), 403) == "forbidden", "only admin lists the DLQ"
        assert refused(await api.call("DELETE", "/dlq/1", cred), 403) == "forbidden"
        assert refused(await api.call("GET", "/keys", cred), 403) == "forbidden"
    assert (await api.call("GET", "/dlq", admin)).status_code == 200
    assert refused(await api.call("GET", f"/notifications/offline/{bob}", send), 403) == "forbidden"
    assert (await api.call("GET", f"/notifications/offline/{bob}", read)).status_code == 200


async def test_another_users_token_reads_and_acknowledges_nothing(api: Api) -> None:
    _, send = await api.key("send")
    alice, bob = user("alice"), user("bob")
    nid = (await api.send(send, bob)).json()["id"]
    theirs, mine = api.s.token(alice), api.s.token(bob)

    queue = f"/notifications/offline/{bob}"
    assert refused(await api.call("GET", queue, theirs), 403) == "forbidden"
    # ?token= is read only by /ws and GET /dashboard (issue 25): on this route it is no credential at all.
    assert refused(await api.call("GET", queue, params={"token": mine}), 401) == "unauthorized"
    for body in ({"up_to_seq": 2**31}, {"ids": [nid]}):
        assert refused(await api.call("POST", f"{queue}/ack", theirs, json=body), 403) == "forbidden"
    for url in api.s.urls:
        code, frames = await socket_outcome(api.s.ws(url, bob, theirs))
        assert (code, frames) == (4403, []), f"{url}: another user's socket must close 4403 before anything is sent"

    # Nothing was delivered or acknowledged: the notification is still in bob's queue, for bob.
    page = await api.call("GET", queue, mine)
    assert page.status_code == 200 and [n["id"] for n in page.json()["notifications"]] == [nid], page.text
    async with connect(api.s.ws(api.url, bob, mine), open_timeout=10, proxy=None) as conn:
        await conn.send('{"type":"ping"}')
        assert '"pong"' in str(await asyncio.wait_for(conn.recv(), timeout=10))  # bob's own socket is served


async def test_expired_forged_and_unsigned_tokens_are_refused(api: Api) -> None:
    bob = user("bob")
    now = int(time.time())
    bad = {
        "expired": api.s.token(bob, ttl_s=-120),
        "forged": api.s.token(bob, secret=secrets.token_urlsafe(32)),
        "unsigned": jwt.encode({"sub": bob, "exp": now + 600}, None, algorithm="none"),
        "no exp": jwt.encode({"sub": bob}, api.s.jwt_secret, algorithm="HS256"),
        "garbage": "eyJhbGciOiJIUzI1NiJ9.e30.garbage",
    }
    for why, token in bad.items():
        r = await api.call("GET", f"/notifications/offline/{bob}", token)
        assert refused(r, 401) in {"token_expired", "invalid_token"}, why
        code, frames = await socket_outcome(api.s.ws(api.url, bob, token))
        assert (code, frames) == (4401, []), why


async def test_a_socket_is_closed_4401_at_its_tokens_exp(api: Api) -> None:
    carol = user("carol")
    exp = int(time.time()) + 3
    token = jwt.encode({"sub": carol, "exp": exp}, api.s.jwt_secret, algorithm="HS256")
    code, frames = await socket_outcome(api.s.ws(api.url, carol, token), timeout_s=15)
    assert code == 4401, f"closed with {code} (frames {frames})"
    assert frames and '"pong"' in frames[0], "the socket was served until its token expired"
    assert time.time() >= exp - 0.5, "closed before the token's exp"


async def test_a_revoked_key_stops_working_at_once_on_every_node(api: Api) -> None:
    name, key = await api.key("send")
    bob = user("bob")
    for url in api.s.urls:
        r = await api.http.post(f"{url}/notifications", json={"user_id": bob, "event": "i11.revoke"},
                                headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 202, r.text
    assert (await api.call("DELETE", f"/keys/{name}", api.s.admin_key)).status_code == 204
    for url in api.s.urls:  # no wait: the very next request
        r = await api.http.post(f"{url}/notifications", json={"user_id": bob, "event": "i11.revoke"},
                                headers={"authorization": f"Bearer {key}"})
        assert refused(r, 401), url
    listed = await api.call("GET", "/keys", api.s.admin_key, params={"include_revoked": "true"})
    mine = [k for k in listed.json()["keys"] if k["name"] == name]
    assert len(mine) == 1 and mine[0]["revoked_at"] is not None and key not in str(mine[0])


async def test_idempotency_keys_are_scoped_to_the_api_key(api: Api) -> None:
    (_, one), (_, two) = await api.key("send"), await api.key("send")
    bob, idem = user("bob"), f"i11-{secrets.token_hex(4)}"
    first = await api.send(one, bob, **{"idempotency-key": idem})
    again = await api.send(one, bob, **{"idempotency-key": idem})
    other = await api.send(two, bob, **{"idempotency-key": idem})
    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json()["id"] == again.json()["id"], "one producer's key created two notifications"
    assert other.json()["id"] != first.json()["id"], "another producer's key answered with someone else's"


# --- issue 25: key-held sockets, query tokens, headers ----------------------------------------------


async def test_api_keys_open_no_sockets_and_cannot_lock_a_user_out(api: Api) -> None:
    """Sockets are end users' own (SPEC §7): an API key's socket, which nothing would close at the key's
    revocation, is refused with 4403 before anything is sent, and so never counts against the user's cap.
    (Before: a read key's socket was served after DELETE /keys, and ten of them made dave's token get 4429.)"""
    _, read = await api.key("read")
    dave = user("dave")
    for url in api.s.urls:
        for cred in (read, api.s.admin_key):
            code, frames = await socket_outcome(api.s.ws(url, dave, cred), timeout_s=5)
            assert (code, frames) == (4403, []), f"{url}: an API key's socket must close 4403 before anything is sent"
    attempts = [socket_outcome(api.s.ws(api.url, dave, read), timeout_s=5) for _ in range(11)]  # over a cap of 10
    outcomes = {(code, tuple(frames)) for code, frames in await asyncio.gather(*attempts)}
    assert outcomes == {(4403, ())}, f"eleven sockets of a read key: {outcomes}"
    async with connect(api.s.ws(api.url, dave, api.s.token(dave)), open_timeout=10, proxy=None) as conn:
        await conn.send('{"type":"ping"}')
        assert '"pong"' in str(await asyncio.wait_for(conn.recv(), timeout=10)), "dave's own token is served"


async def test_query_tokens_are_refused_on_http_routes(api: Api) -> None:
    """A key in an address ends in logs and histories: ?token= is read by /ws and GET /dashboard only.
    (Before: POST /keys?token=<admin> answered 201.)"""
    name = f"conf-query-{secrets.token_hex(4)}"
    body = {"name": name, "scopes": ["send"]}
    r = await api.http.post(f"{api.url}/keys", params={"token": api.s.admin_key}, json=body)
    assert refused(r, 401) == "unauthorized", "a key from ?token= created a key"
    assert refused(await api.call("GET", "/dlq", params={"token": api.s.admin_key}), 401) == "unauthorized"
    page = await api.call("GET", "/dashboard", params={"token": api.s.admin_key})
    assert page.status_code == 200 and page.headers.get("referrer-policy") == "no-referrer", page.status_code
    assert "history.replaceState" in page.text, "the dashboard must take the key out of the address bar"


async def test_answers_forbid_framing_sniffing_and_referrers(api: Api) -> None:
    for path, cred in (("/healthz", None), ("/dlq", api.s.admin_key), ("/dlq", None), ("/dashboard", api.s.admin_key)):
        r = await api.call("GET", path, cred)
        where = f"{path} ({r.status_code})"
        assert r.headers.get("x-frame-options") == "DENY", where
        assert r.headers.get("x-content-type-options") == "nosniff", where
        assert r.headers.get("referrer-policy") == "no-referrer", where
        assert "frame-ancestors 'none'" in r.headers.get("content-security-policy", ""), where
    assert (await api.call("GET", "/docs")).status_code == 404, "/docs loads a CDN's script: off by default"
