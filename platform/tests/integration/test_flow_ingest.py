"""Ingestion on real Redis and PostgreSQL: every kind of bad input answered with a 4xx JSON error and nothing
stored (I10), idempotency (I5), the backlog bound (I9), and the operational endpoints."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from helpers import wait_for
from integration_support import (
    Gateways,
    SocketFactory,
    Workers,
    notify,
    offline_ids,
    post,
    settled,
    table_counts,
    users,
)

from notiflow.config import Settings
from notiflow.devstack import EmbeddedRedis

pytestmark = pytest.mark.timeout(60)

_OK: dict[str, Any] = {"user_id": "someone", "event": "ok.event", "payload": {}}

# (case name, JSON body or raw bytes, extra headers, expected status, expected error code or None)
_BAD_POSTS: list[tuple[str, Any, dict[str, str], int, str | None]] = [
    ("malformed json", b'{"user_id": "a", "event": ', {}, 400, "malformed_json"),
    ("empty body", b"", {}, 400, "malformed_json"),
    ("trailing garbage", b'{"user_id": "a", "event": "e"} x', {}, 400, "malformed_json"),
    ("body is an array", [], {}, 422, None),
    ("body is a string", "hello", {}, 422, None),
    ("body is null", None, {}, 422, None),
    ("text/plain", b'{"user_id": "a", "event": "e"}', {"content-type": "text/plain"}, 415, None),
    ("no content-type", b'{"user_id": "a", "event": "e"}', {"content-type": ""}, 415, None),
    ("form content-type", b"user_id=a&event=e", {"content-type": "application/x-www-form-urlencoded"}, 415, None),
    ("unknown field", {**_OK, "priority": "high"}, {}, 422, None),
    ("missing event", {"user_id": "a"}, {}, 422, None),
    ("user_id is a number", {**_OK, "user_id": 5}, {}, 422, None),
    ("user_ids is a string", {"user_ids": "a", "event": "e"}, {}, 422, None),
    ("user_ids holds a number", {"user_ids": ["a", 1], "event": "e"}, {}, 422, None),
    ("event is a number", {**_OK, "event": 7}, {}, 422, None),
    ("payload is a list", {**_OK, "payload": [1, 2]}, {}, 422, None),
    ("payload is a string", {**_OK, "payload": "x"}, {}, 422, None),
    ("ttl is a string", {**_OK, "ttl_seconds": "60"}, {}, 422, None),
    ("ttl is a float", {**_OK, "ttl_seconds": 1.5}, {}, 422, None),
    ("ttl is a bool", {**_OK, "ttl_seconds": True}, {}, 422, None),
    ("ttl is zero", {**_OK, "ttl_seconds": 0}, {}, 422, None),
    ("ttl is negative", {**_OK, "ttl_seconds": -5}, {}, 422, None),
    ("webhook_url is a number", {**_OK, "webhook_url": 3}, {}, 422, None),
    ("both user_id and user_ids", {**_OK, "user_ids": ["b"]}, {}, 422, None),
    ("neither user_id nor user_ids", {"event": "e", "payload": {}}, {}, 422, None),
    ("no recipients", {"user_ids": [], "event": "e"}, {}, 422, None),
    ("10,001 recipients", {"user_ids": [f"r{i}" for i in range(10_001)], "event": "e"}, {}, 422, None),
    ("repeated recipient", {"user_ids": ["a", "b", "a"], "event": "e"}, {}, 422, None),
    ("empty user id", {**_OK, "user_id": ""}, {}, 422, None),
    ("user id with a slash", {**_OK, "user_id": "a/b"}, {}, 422, None),
    ("user id with NUL", {**_OK, "user_id": "a\x00b"}, {}, 422, None),
    ("user id with newline", {**_OK, "user_id": "a\nb"}, {}, 422, None),
    ("user id with DEL", {**_OK, "user_id": "a\x7f"}, {}, 422, None),
    ("user id of 256 chars", {**_OK, "user_id": "u" * 256}, {}, 422, None),
    ("one bad id among many", {"user_ids": ["ok1", "ok2", "bad/id"], "event": "e"}, {}, 422, None),
    ("empty event", {**_OK, "event": ""}, {}, 422, None),
    ("event with a space", {**_OK, "event": "order shipped"}, {}, 422, None),
    ("event with unicode", {**_OK, "event": "über"}, {}, 422, None),
    ("event of 129 chars", {**_OK, "event": "e" * 129}, {}, 422, None),
    ("payload over 64 KiB", {**_OK, "payload": {"blob": "x" * (64 * 1024)}}, {}, 413, "payload_too_large"),
    ("webhook host not allowed", {**_OK, "webhook_url": "http://evil.example/hook"}, {}, 422, None),
    ("webhook_url not a URL", {**_OK, "webhook_url": "not a url"}, {}, 422, None),
    ("webhook_url not http", {**_OK, "webhook_url": "ftp://127.0.0.1/x"}, {}, 422, None),
    ("Idempotency-Key of 256 chars", _OK, {"idempotency-key": "k" * 256}, 400, "invalid_idempotency_key"),
    ("Idempotency-Key with a tab", _OK, {"idempotency-key": "a\tb"}, 400, "invalid_idempotency_key"),
    ("headers over 16 KiB", _OK, {f"x-pad-{i}": "p" * 1000 for i in range(20)}, 431, None),
]


def _assert_error_body(response: httpx.Response, status: int, code: str | None, case: str) -> None:
    assert response.status_code == status, f"{case}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json"), case
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}, case
    assert isinstance(error["code"], str) and error["code"], case
    assert isinstance(error["message"], str) and error["message"], case
    if code is not None:
        assert error["code"] == code, f"{case}: {error}"


async def _send(http: httpx.AsyncClient, url: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    merged = {"content-type": "application/json", **headers}
    if merged["content-type"] == "":
        del merged["content-type"]
    return await http.post(url, content=content, headers=merged)


async def _nothing_stored(db: asyncpg.Pool, rds: aioredis.Redis, settings: Settings) -> None:
    assert await table_counts(db) == dict.fromkeys(
        ("notifications", "deliveries", "user_seqs", "idempotency_keys", "delivery_attempts", "dlq"), 0
    )
    assert await rds.xlen(settings.stream_key) == 0


async def test_every_bad_notification_is_a_4xx_json_error_and_nothing_is_stored(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool, rds: aioredis.Redis, settings: Settings
) -> None:
    gw = await gateways.start(webhook_allowed_hosts=["127.0.0.1:9"])
    url = f"{gw.url}/notifications"
    for case, body, headers, status, code in _BAD_POSTS:
        _assert_error_body(await _send(http, url, body, headers), status, code, case)

    # Bodies over max_body_bytes: declared by Content-Length, and streamed without one (chunked).
    huge = b'{"user_id": "a", "event": "e", "payload": {"x": "' + b"y" * (3 * 1024 * 1024) + b'"}}'
    _assert_error_body(await _send(http, url, huge, {}), 413, "body_too_large", "over max_body_bytes")

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(huge), 256 * 1024):
            yield huge[i : i + 256 * 1024]

    chunked = await http.post(url, content=chunks(), headers={"content-type": "application/json"})
    _assert_error_body(chunked, 413, "body_too_large", "chunked over max_body_bytes")
    await _nothing_stored(db, rds, settings)

    # The same gateway accepts a good request: the rejections were about the input, not the node.
    await notify(http, gw.url, ["someone"])
    assert (await table_counts(db))["notifications"] == 1


async def test_bad_input_on_the_other_endpoints(
    gateways: Gateways, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    [mia] = users(1)
    nid = await notify(http, gw.url, [mia])
    before = await table_counts(db)
    ack = f"{gw.url}/notifications/offline/{mia}/ack"
    cases: list[tuple[str, str, str, Any, int]] = [
        ("offline: control char in user id", "GET", f"{gw.url}/notifications/offline/a%01b", None, 422),
        ("offline: 256-char user id", "GET", f"{gw.url}/notifications/offline/{'u' * 256}", None, 422),
        ("offline: limit 0", "GET", f"{gw.url}/notifications/offline/{mia}?limit=0", None, 422),
        ("offline: limit 1001", "GET", f"{gw.url}/notifications/offline/{mia}?limit=1001", None, 422),
        ("offline: limit not a number", "GET", f"{gw.url}/notifications/offline/{mia}?limit=ten", None, 422),
        ("offline: negative after_seq", "GET", f"{gw.url}/notifications/offline/{mia}?after_seq=-1", None, 422),
        ("ack: malformed json", "POST", ack, b'{"ids": [', 400),
        ("ack: empty object", "POST", ack, {}, 422),
        ("ack: ids and up_to_seq", "POST", ack, {"ids": [nid], "up_to_seq": 1}, 422),
        ("ack: id not a uuid", "POST", ack, {"ids": ["nope"]}, 422),
        ("ack: ids not a list", "POST", ack, {"ids": nid}, 422),
        ("ack: up_to_seq a string", "POST", ack, {"up_to_seq": "3"}, 422),
        ("ack: negative up_to_seq", "POST", ack, {"up_to_seq": -1}, 422),
        ("ack: unknown field", "POST", ack, {"up_to_seq": 1, "all": True}, 422),
        ("ack: text/plain", "POST", ack, b"up_to_seq=1", 415),
        ("ack: control char in user id", "POST", f"{gw.url}/notifications/offline/a%01b/ack", {"up_to_seq": 9}, 422),
        ("get: not a uuid", "GET", f"{gw.url}/notifications/not-a-uuid", None, 422),
        ("get: unknown uuid", "GET", f"{gw.url}/notifications/{uuid.uuid4()}", None, 404),
        ("get: bad user_id filter", "GET", f"{gw.url}/notifications/{nid}?user_id=a%0Ab", None, 422),
        ("get: limit 0", "GET", f"{gw.url}/notifications/{nid}?limit=0", None, 422),
        ("dlq: limit 0", "GET", f"{gw.url}/dlq?limit=0", None, 422),
        ("dlq: replay unknown", "POST", f"{gw.url}/dlq/987654/replay", None, 404),
        ("dlq: replay not a number", "POST", f"{gw.url}/dlq/abc/replay", None, 422),
        ("dlq: delete unknown", "DELETE", f"{gw.url}/dlq/987654", None, 404),
        ("unknown route", "GET", f"{gw.url}/no/such/route", None, 404),
        ("unknown route, POST", "POST", f"{gw.url}/notification", _OK, 404),
        ("wrong method", "PUT", f"{gw.url}/notifications", _OK, 405),
    ]
    for case, method, url, body, status in cases:
        if isinstance(body, bytes):
            ctype = "text/plain" if status == 415 else "application/json"
            response = await http.request(method, url, content=body, headers={"content-type": ctype})
        elif body is not None:
            response = await http.request(method, url, json=body)
        else:
            response = await http.request(method, url)
        _assert_error_body(response, status, None, case)

    # A WebSocket for an invalid user id is closed with 4400 and registers nothing.
    bad = await socket(gw, "a%01b", sync=False)
    assert await bad.close_code() == 4400
    assert await table_counts(db) == before
    assert await offline_ids(http, gw.url, mia) == [nid]


async def test_idempotent_ingest(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    nina, otto = users(2)
    body = {"user_ids": [nina, otto], "event": "invoice.paid", "payload": {"invoice": 7, "amount": 12.5}}
    first = await post(http, gw.url, body, key="invoice-7-paid")
    same = await post(http, gw.url, body, key="invoice-7-paid")
    # The same request with its fields in another order is the same request.
    reordered = {"payload": {"amount": 12.5, "invoice": 7}, "event": "invoice.paid", "user_ids": [nina, otto]}
    again = await post(http, gw.url, reordered, key="invoice-7-paid")
    assert first.json() == same.json() == again.json()
    assert first.json()["recipients"] == 2

    different = await post(http, gw.url, {**body, "payload": {"invoice": 8}}, key="invoice-7-paid", expect=422)
    assert different.json()["error"]["code"] == "idempotency_key_reused"
    other_recipients = await post(http, gw.url, {**body, "user_ids": [nina]}, key="invoice-7-paid", expect=422)
    assert other_recipients.json()["error"]["code"] == "idempotency_key_reused"

    counts = await table_counts(db)
    assert (counts["notifications"], counts["deliveries"], counts["idempotency_keys"]) == (1, 2, 1)
    nid = first.json()["id"]
    assert await settled(db, nid) == {nina: "offline", otto: "offline"}
    assert await offline_ids(http, gw.url, nina) == [nid]

    # Another key, or no key, is another notification.
    other = await post(http, gw.url, body, key="invoice-7-paid-resent")
    unkeyed = await post(http, gw.url, body)
    assert len({nid, other.json()["id"], unkeyed.json()["id"]}) == 3


async def test_concurrent_requests_with_one_key_create_one_notification(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    a, b = await gateways.start(), await gateways.start()
    [pia] = users(1)
    body = {"user_id": pia, "event": "race.same", "payload": {"v": 1}}
    answers = await asyncio.gather(*(post(http, (a, b)[i % 2].url, body, key="race-1") for i in range(24)))
    assert len({r.json()["id"] for r in answers}) == 1
    assert (await table_counts(db))["notifications"] == 1

    # Same key, two different bodies raced: exactly one of them wins; the other body gets 422.
    other = {"user_id": pia, "event": "race.other", "payload": {"v": 2}}
    mixed = await asyncio.gather(
        *(post(http, (a, b)[i % 2].url, (body, other)[i % 2], key="race-2", expect=None) for i in range(24))
    )
    wins = {r.json()["id"] for r in mixed if r.status_code == 202}
    assert len(wins) == 1
    by_body = {i % 2: {r.status_code for j, r in enumerate(mixed) if j % 2 == i % 2} for i in range(2)}
    assert sorted(by_body.values(), key=sorted) == [{202}, {422}]
    assert (await table_counts(db))["notifications"] == 2
    assert (await table_counts(db))["deliveries"] == 2
    seqs = [r["seq"] for r in await db.fetch("SELECT seq FROM deliveries WHERE user_id = $1 ORDER BY seq", pia)]
    assert seqs == [1, 2]  # no seq was burnt by the requests that created nothing


async def test_backlog_bound_answers_429_and_stores_nothing_then_recovers(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool, rds: aioredis.Redis,
    settings: Settings,
) -> None:
    gw = await gateways.start(stream_max_backlog=5)
    [quinn] = users(1)
    accepted: list[str] = []
    rejected: httpx.Response | None = None
    for i in range(200):  # no stream worker runs: the backlog only grows
        response = await post(http, gw.url, {"user_id": quinn, "event": "flood", "payload": {"i": i}}, expect=None)
        if response.status_code == 429:
            rejected = response
            break
        assert response.status_code == 202, response.text
        accepted.append(response.json()["id"])
        await asyncio.sleep(0.02)
    assert rejected is not None, "never rejected"
    _assert_error_body(rejected, 429, "backlog_full", "over the backlog bound")
    assert int(rejected.headers["retry-after"]) >= 1
    # Exact on one node: each entry counts once, in XLEN or in what the node XADDed since (an XADD racing the
    # XLEN refresh was counted twice, and 4 were admitted).
    assert len(accepted) == 5
    assert await rds.xlen(settings.stream_key) == 5
    assert (await table_counts(db))["notifications"] == len(accepted)  # the 429 stored nothing

    # Once a worker drains the stream, ingestion takes requests again, and nothing accepted was dropped.
    await workers.stream()

    async def accepting() -> bool:
        r = await post(http, gw.url, {"user_id": quinn, "event": "after", "payload": {}}, expect=None)
        if r.status_code == 202:
            accepted.append(r.json()["id"])
        return r.status_code == 202

    await wait_for(accepting, timeout_s=10, interval_s=0.1)
    for nid in accepted:
        assert await settled(db, nid) == {quinn: "offline"}
    assert await offline_ids(http, gw.url, quinn) == accepted


async def test_health_readiness_and_metrics(gateways: Gateways, http: httpx.AsyncClient) -> None:
    gw = await gateways.start()
    health = await http.get(f"{gw.url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = await http.get(f"{gw.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"postgresql": "ok", "redis": "ok"}}

    await notify(http, gw.url, users(1))
    metrics = await http.get(f"{gw.url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "# TYPE notiflow_http_requests_total counter" in text
    assert 'notiflow_http_requests_total{route="/notifications",status="202"}' in text
    accepted = [line for line in text.splitlines() if line.startswith("notiflow_notifications_accepted_total ")]
    assert accepted and float(accepted[0].split()[1]) >= 1
    assert "notiflow_websockets " in text
    # The ingest latency histogram and the rejection counter move too (a 422 here).
    bad = await http.post(f"{gw.url}/notifications", json={"user_id": "", "event": "x"})
    assert bad.status_code == 422
    text = (await http.get(f"{gw.url}/metrics")).text
    count = [line for line in text.splitlines() if line.startswith("notiflow_ingest_seconds_count ")]
    assert count and float(count[0].split()[1]) >= 1
    # The registry is per process and other tests post 422s too: at least this one is counted.
    series = 'notiflow_notifications_refused_total{reason="invalid_request"}'
    rejected = [line for line in text.splitlines() if line.startswith(series)]
    assert rejected and float(rejected[0].split()[1]) >= 1


async def test_readiness_follows_redis(gateways: Gateways, http: httpx.AsyncClient, tmp_path: Path) -> None:
    """A gateway whose Redis goes away says so at /readyz (503) and is ready again when it is back."""
    with EmbeddedRedis(workdir=tmp_path) as own_redis:
        gw = await gateways.start(redis_url=own_redis.url)
        assert (await http.get(f"{gw.url}/readyz")).status_code == 200
        await asyncio.to_thread(own_redis.stop)

        async def unready() -> bool:
            r = await http.get(f"{gw.url}/readyz")
            return r.status_code == 503 and r.json()["checks"]["redis"].startswith("error")

        await wait_for(unready, timeout_s=10, interval_s=0.1)
        assert (await http.get(f"{gw.url}/healthz")).status_code == 200  # alive all the same
        await asyncio.to_thread(own_redis.start)

        async def ready() -> bool:
            return (await http.get(f"{gw.url}/readyz")).status_code == 200

        await wait_for(ready, timeout_s=15, interval_s=0.1)
        await gw.stop()
