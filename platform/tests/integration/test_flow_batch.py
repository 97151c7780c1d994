"""POST /notifications/batch on real Redis and PostgreSQL (SPEC §2): validated as a whole (a 422 names the bad
items by index and stores nothing), committed together, answered per item in order; idempotency keys per item."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from integration_support import Gateways, Workers, offline_page, settled, table_counts, users

from notiflow.config import Settings

pytestmark = pytest.mark.timeout(60)


def _item(user: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"user_id": user, "event": "batch.item", "payload": {"n": n}, **extra}


async def _batch(http: httpx.AsyncClient, url: str, body: Any, expect: int) -> Any:
    response = await http.post(f"{url}/notifications/batch", json=body)
    assert response.status_code == expect, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


async def test_a_batch_is_accepted_in_order_and_delivered_like_single_requests(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start()
    await workers.stream()
    ana, ben = users(2)
    items = [_item(ana, 0), {"user_ids": [ana, ben], "event": "batch.many", "payload": {"n": 1}}, _item(ana, 2)]
    answer = await _batch(http, gw.url, {"notifications": items}, 202)
    results = answer["results"]
    assert [r["status"] for r in results] == ["accepted"] * 3
    assert [r["recipients"] for r in results] == [1, 2, 1]
    ids = [str(uuid.UUID(r["id"])) for r in results]
    assert len(set(ids)) == 3
    for nid in ids:
        assert set((await settled(db, nid)).values()) == {"offline"}
    page = await offline_page(http, gw.url, ana)
    # Per recipient, seq follows the order of the items (I4 within one request).
    assert [n["id"] for n in page["notifications"]] == ids
    assert [n["payload"]["n"] for n in page["notifications"]] == [0, 1, 2]
    assert [n["id"] for n in (await offline_page(http, gw.url, ben))["notifications"]] == [ids[1]]


async def test_idempotency_keys_per_item(gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    gw = await gateways.start()
    [cleo] = users(1)
    keyed = _item(cleo, 1, idempotency_key="batch-key-1")
    first = (await _batch(http, gw.url, {"notifications": [keyed, _item(cleo, 2)]}, 202))["results"]
    # A replay: the keyed item answers what it answered first and creates nothing; the unkeyed one is new.
    again = (await _batch(http, gw.url, {"notifications": [keyed, _item(cleo, 2)]}, 202))["results"]
    assert again[0] == first[0]
    assert again[1]["id"] != first[1]["id"]
    # The same key as a header on POST /notifications is the same key.
    single = await http.post(
        f"{gw.url}/notifications", json=_item(cleo, 1), headers={"idempotency-key": "batch-key-1"}
    )
    assert single.status_code == 202 and single.json() == first[0]
    # The key with another body: that item gets an error, its neighbours are accepted.
    changed = {**keyed, "payload": {"n": 99}}
    mixed = (await _batch(http, gw.url, {"notifications": [_item(cleo, 3), changed]}, 202))["results"]
    assert mixed[0]["status"] == "accepted"
    assert mixed[1] == {"error": {"code": "idempotency_key_reused", "message": mixed[1]["error"]["message"],
                                  "details": None}}
    # One key twice within a batch: one notification, both items answered with it.
    twice = _item(cleo, 4, idempotency_key="batch-key-2")
    dup = (await _batch(http, gw.url, {"notifications": [twice, twice]}, 202))["results"]
    assert dup[0] == dup[1]
    counts = await table_counts(db)
    assert (counts["notifications"], counts["idempotency_keys"]) == (5, 2)


_GOOD: dict[str, Any] = {"user_id": "someone", "event": "ok.event", "payload": {}}

# (case, body, expected bad indices or None when the batch as a whole is refused)
_BAD_BATCHES: list[tuple[str, Any, list[int] | None]] = [
    ("not an object", [_GOOD], None),
    ("no notifications field", {"items": [_GOOD]}, None),
    ("an unknown top-level field", {"notifications": [_GOOD], "extra": 1}, None),
    ("notifications not a list", {"notifications": _GOOD}, None),
    ("empty list", {"notifications": []}, None),
    ("1,001 items", {"notifications": [_GOOD] * 1001}, None),
    ("an item not an object", {"notifications": [_GOOD, "x", _GOOD]}, [1]),
    ("unknown field in an item", {"notifications": [_GOOD, {**_GOOD, "priority": 1}]}, [1]),
    ("bad user id", {"notifications": [{**_GOOD, "user_id": "a/b"}, _GOOD]}, [0]),
    ("several bad items", {"notifications": [{**_GOOD, "event": ""}, _GOOD, {"event": "e"}]}, [0, 2]),
    ("idempotency_key too long", {"notifications": [{**_GOOD, "idempotency_key": "k" * 256}]}, [0]),
    ("idempotency_key not a string", {"notifications": [{**_GOOD, "idempotency_key": 7}]}, [0]),
    ("payload over 64 KiB", {"notifications": [_GOOD, {**_GOOD, "payload": {"b": "x" * 65536}}]}, [1]),
    ("webhook host not allowed", {"notifications": [{**_GOOD, "webhook_url": "http://evil.example/h"}]}, [0]),
]


async def test_a_bad_item_refuses_the_whole_batch_and_stores_nothing(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool, rds: aioredis.Redis, settings: Settings
) -> None:
    gw = await gateways.start()
    for case, body, bad in _BAD_BATCHES:
        error = (await _batch(http, gw.url, body, 422))["error"]
        assert set(error) == {"code", "message", "details"}, case
        if bad is not None:
            assert [d["index"] for d in error["details"]] == bad, f"{case}: {error}"
            assert all(d["code"] and d["message"] for d in error["details"]), case
    malformed = await http.post(
        f"{gw.url}/notifications/batch", content=b'{"notifications": [', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "malformed_json"
    assert await table_counts(db) == dict.fromkeys(
        ("notifications", "deliveries", "user_seqs", "idempotency_keys", "delivery_attempts", "dlq"), 0
    )
    assert await rds.xlen(settings.stream_key) == 0
    # A thousand items are accepted (the upper bound is inclusive).
    full = await _batch(http, gw.url, {"notifications": [_GOOD] * 1000}, 202)
    assert len(full["results"]) == 1000 and (await table_counts(db))["notifications"] == 1000
