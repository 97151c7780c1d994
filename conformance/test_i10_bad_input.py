"""I10 bad input: malformed JSON, wrong types, oversize bodies, unknown fields, bad ids: a clear 4xx JSON error
({"error": {"code", "message", ...}}) and nothing stored.

Table-driven: each case names its own user id, whose offline queue must stay empty; against a cluster the suite
started, the row counts of every table must not move either."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio

from conformance.cluster import Target

JSON_CT = {"content-type": "application/json"}
INVALID = frozenset({400, 422})
TOO_LARGE = frozenset({413})
ANY_4XX = frozenset(range(400, 500))
Body = Callable[[str], Any]


@dataclass(frozen=True)
class Case:
    name: str
    body: Body | None = None  # given the case's user id: bytes are sent as they are, anything else as JSON
    method: str = "POST"
    path: str = "/notifications"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_CT))
    statuses: frozenset[int] = INVALID


def _n(**extra: Any) -> Body:
    """A notification body for the case's user with ``extra`` fields merged over a valid one."""
    return lambda u: {"user_id": u, "event": "bad.input", "payload": {"u": u}, **extra}


def _without(*names: str, **extra: Any) -> Body:
    return lambda u: {k: v for k, v in _n(**extra)(u).items() if k not in names}


NESTED = "[" * 5000 + "]" * 5000


def _deep(depth: int) -> dict[str, Any]:
    """An object nested ``depth`` deep: valid JSON, and more than the platform can encode back."""
    inner: dict[str, Any] = {}
    for _ in range(depth - 1):
        inner = {"a": inner}
    return inner

CASES = [
    Case("malformed json", lambda u: f'{{"user_id": "{u}", "event": "e"'.encode()),
    Case("json array body", lambda u: json.dumps([u]).encode()),
    Case("empty body", lambda u: b""),
    Case("json null", lambda u: b"null"),
    Case("NaN literal", lambda u: f'{{"user_id": "{u}", "event": "e", "payload": {{"x": NaN}}}}'.encode()),
    Case("invalid utf-8", lambda u: f'{{"user_id": "{u}\xff", "event": "e"}}'.encode("latin-1")),
    Case(
        "deeply nested payload", lambda u: f'{{"user_id": "{u}", "event": "e", "payload": {{"a": {NESTED}}}}}'.encode()
    ),
    Case("user_ids is a string", _without("user_id", user_ids="x")),
    Case("user_id is a number", _n(user_id=5)),
    Case("both user_id and user_ids", lambda u: {**_n()(u), "user_ids": [u]}),
    Case("no recipient", _without("user_id")),
    Case("empty user_ids", _without("user_id", user_ids=[])),
    Case(
        "10001 user_ids",
        lambda u: {**_without("user_id")(u), "user_ids": [f"{u}-{i}" for i in range(10_001)]},
        statuses=INVALID | TOO_LARGE,
    ),
    Case("duplicate user_ids", lambda u: {**_without("user_id")(u), "user_ids": [u, u]}),
    Case("user id with a slash", lambda u: _n()(u) | {"user_id": f"{u}/x"}),
    Case("user id with a control char", lambda u: _n()(u) | {"user_id": f"{u}\u0007"}),
    Case("user id of 256 chars", lambda u: _n()(u) | {"user_id": u + "x" * (256 - len(u))}),
    Case("empty user id", _n(user_id="")),
    Case("event missing", _without("event")),
    Case("event with a space", _n(event="bad event")),
    Case("event of 129 chars", _n(event="e" * 129)),
    Case("event is a number", _n(event=7)),
    Case("payload is a list", _n(payload=[1])),
    Case("payload is a string", _n(payload="x")),
    Case("payload over 64 KiB", lambda u: _n(payload={"u": u, "blob": "x" * 70_000})(u), statuses=TOO_LARGE),
    Case("body over 2 MiB", lambda u: _n(payload={"u": u, "blob": "x" * 3_000_000})(u), statuses=TOO_LARGE),
    Case("unknown field", _n(priority="high")),
    Case("ttl negative", _n(ttl_seconds=-5)),
    Case("ttl zero", _n(ttl_seconds=0)),
    Case("ttl is a string", _n(ttl_seconds="60")),
    Case("ttl is a float", _n(ttl_seconds=1.5)),
    Case("ttl is a boolean", _n(ttl_seconds=True)),
    Case("webhook host not allowed", _n(webhook_url="http://hooks.invalid/x"), statuses=ANY_4XX),
    Case("webhook not a URL", _n(webhook_url="not a url"), statuses=ANY_4XX),
    Case(
        "text/plain content type",
        lambda u: json.dumps(_n()(u)).encode(),
        headers={"content-type": "text/plain"},
        statuses=INVALID | {415},
    ),
    Case("no content type", lambda u: json.dumps(_n()(u)).encode(), headers={}, statuses=INVALID | {415}),
    Case(
        "form encoded",
        lambda u: f"user_id={u}&event=e".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
        statuses=INVALID | {415},
    ),
    Case("huge header", _n(), headers={**JSON_CT, "x-junk": "a" * 65_536}, statuses=ANY_4XX),
    Case("idempotency key of 256 chars", _n(), headers={**JSON_CT, "idempotency-key": "k" * 256}),
    Case("notification id not a uuid", None, "GET", "/notifications/not-a-uuid", statuses=INVALID | {404}),
    Case("unknown notification id", None, "GET", f"/notifications/{uuid.uuid4()}", statuses=frozenset({404})),
    Case("queue of a 256-char user", None, "GET", "/notifications/offline/" + "u" * 256, statuses=INVALID | {404}),
    Case("queue of a user with a control char", None, "GET", "/notifications/offline/{u}%07", statuses=INVALID | {404}),
    Case("queue limit not a number", None, "GET", "/notifications/offline/{u}?limit=abc"),
    Case("queue limit negative", None, "GET", "/notifications/offline/{u}?limit=-1"),
    Case("queue after_seq not a number", None, "GET", "/notifications/offline/{u}?after_seq=x"),
    Case("ack ids not uuids", lambda u: {"ids": ["not-a-uuid"]}, path="/notifications/offline/{u}/ack"),
    Case("ack ids and up_to_seq", lambda u: {"ids": [], "up_to_seq": 1}, path="/notifications/offline/{u}/ack"),
    Case("ack empty object", lambda u: {}, path="/notifications/offline/{u}/ack"),
    Case("ack ids not a list", lambda u: {"ids": "x"}, path="/notifications/offline/{u}/ack"),
    Case("ack unknown field", lambda u: {"up_to_seq": 1, "all": True}, path="/notifications/offline/{u}/ack"),
    Case("ack up_to_seq negative", lambda u: {"up_to_seq": -1}, path="/notifications/offline/{u}/ack"),
    Case("ack up_to_seq a string", lambda u: {"up_to_seq": "9"}, path="/notifications/offline/{u}/ack"),
    Case("ack malformed json", lambda u: b'{"ids": [', path="/notifications/offline/{u}/ack"),
    Case(
        "ack for a 256-char user",
        lambda u: {"up_to_seq": 1},
        path="/notifications/offline/" + "u" * 256 + "/ack",
        statuses=INVALID | {404},
    ),
    Case("dlq limit not a number", None, "GET", "/dlq?limit=abc"),
    Case("dlq replay of a non-id", None, "POST", "/dlq/abc/replay", statuses=INVALID | {404}),
    Case("dlq delete of a non-id", None, "DELETE", "/dlq/abc", statuses=INVALID | {404}),
    # Hostile input (issue 10): each of these was a 500 once, or stored what it must not.
    Case("NUL in a payload string", _n(payload={"text": "a\u0000b"})),
    Case("NUL in a payload key", _n(payload={"a\u0000": 1})),
    Case("NUL in the user id", lambda u: _n()(u) | {"user_id": f"{u}\u0000"}),
    Case("payload nested 300 deep", lambda u: _n()(u) | {"payload": _deep(300)}),
    Case("user id with a bidi override", lambda u: _n()(u) | {"user_id": f"{u}\u202egnp.exe"}),
    Case("user id with a zero-width space", lambda u: _n()(u) | {"user_id": f"{u}\u200b"}),
    Case("user ids with a zero-width joiner", _without("user_id", user_ids=["a", "a\u200db"])),
    Case("queue of a user with a bidi isolate", None, "GET", "/notifications/offline/{u}%E2%81%A6", statuses=INVALID),
    Case("queue after_seq over bigint", None, "GET", f"/notifications/offline/{{u}}?after_seq={2**63}"),
    Case("queue after_seq of 2**70", None, "GET", f"/notifications/offline/{{u}}?after_seq={2**70}"),
    Case("ack up_to_seq over bigint", lambda u: {"up_to_seq": 2**63}, path="/notifications/offline/{u}/ack"),
    Case("ack up_to_seq of 10**30", lambda u: {"up_to_seq": 10**30}, path="/notifications/offline/{u}/ack"),
    Case("dlq after over bigint", None, "GET", f"/dlq?after={2**63}"),
    Case("dlq event with NUL", None, "GET", "/dlq?event=a%00b"),
    Case("dlq user with a zero-width space", None, "GET", "/dlq?user_id=a%E2%80%8B"),
    Case("dlq replay of an id over bigint", None, "POST", f"/dlq/{2**63}/replay", statuses=INVALID | {404}),
    Case("dlq delete of an id over bigint", None, "DELETE", f"/dlq/{2**64}", statuses=INVALID | {404}),
    Case("notification of a user with NUL", None, "GET", f"/notifications/{uuid.uuid4()}?user_id=a%00",
         statuses=INVALID | {404}),
    Case("unknown route", None, "GET", "/no-such-route", statuses=frozenset({404})),
    Case("wrong method", None, "PUT", "/notifications", statuses=frozenset({405})),
]

TABLES = ("notifications", "deliveries", "delivery_attempts", "idempotency_keys", "dlq")


@pytest_asyncio.fixture(loop_scope="session")
async def row_counts(target: Target) -> AsyncIterator[Callable[[], Any] | None]:
    """Counts every table's rows (only for a cluster the suite started; None otherwise)."""
    if target.database_url is None:
        yield None
        return
    import asyncpg

    conn = await asyncpg.connect(target.database_url)

    async def count() -> dict[str, int]:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}

    try:
        yield count
    finally:
        await conn.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input_gets_a_json_4xx_and_leaves_no_trace(
    case: Case, target: Target, http: httpx.AsyncClient, run_id: str, row_counts: Callable[[], Any] | None
) -> None:
    user = f"{run_id}-bad"
    url = target.urls[0] + case.path.replace("{u}", user)
    raw = None if case.body is None else case.body(user)
    content = raw if isinstance(raw, bytes) or raw is None else json.dumps(raw).encode()
    before = await row_counts() if row_counts else None
    resp = await http.request(case.method, url, content=content, headers=case.headers)
    assert resp.status_code in case.statuses, f"{case.name}: {resp.status_code} {resp.text[:300]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), (
        f"{case.name}: {resp.status_code} with content-type {resp.headers.get('content-type')!r}: {resp.text[:200]}"
    )
    error = resp.json().get("error")
    assert isinstance(error, dict), f"{case.name}: no error object in {resp.text[:300]}"
    assert isinstance(error.get("code"), str) and error["code"], f"{case.name}: error without a code: {error}"
    assert isinstance(error.get("message"), str) and error["message"], f"{case.name}: error without a message"

    queue = await http.get(f"{target.urls[0]}/notifications/offline/{user}")
    assert queue.status_code == 200 and queue.json()["notifications"] == [], f"{case.name} left {queue.text[:300]}"
    if row_counts is not None:
        assert await row_counts() == before, f"{case.name}: rows changed although the request was refused"
