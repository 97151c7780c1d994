"""Forgetting idempotency keys after 24 h (SPEC I5), on real stores: keys are unique per producer (API key),
so one producer's aged key stops holding, never another producer's fresh key of the same name (issue 25,
finding 2). Aged keys are no longer deleted one by one: they stop counting at once, and go with their day
partition (migration 013, test_idempotency_partitions.py)."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest
from integration_support import Gateways, table_counts, users
from pydantic import SecretStr

from notiflow.config import Settings
from notiflow.credentials import Scope
from notiflow.service.auth import KeyService

pytestmark = pytest.mark.timeout(60)


async def test_forgetting_one_producers_aged_key_keeps_another_producers_fresh_key_of_the_same_name(
    gateways: Gateways, keys: KeyService, http: httpx.AsyncClient, db: asyncpg.Pool, settings: Settings,
) -> None:
    gw = await gateways.start(auth="on", jwt_secret=SecretStr("x" * 32))
    a, b = [await keys.create(f"producer-{uuid.uuid4().hex[:8]}", frozenset({Scope.SEND})) for _ in range(2)]
    body = {"event": "order.paid", "payload": {"order": 42}, "user_id": users(1)[0]}

    async def send(key: dict[str, object]) -> str:
        r = await http.post(f"{gw.url}/notifications", json=body,
                            headers={"authorization": f"Bearer {key['key']}", "idempotency-key": "order-42"})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    first_a, first_b = await send(a), await send(b)
    assert first_a != first_b
    # Only A's key is past the 24 h: this is the cleanup's own test, so its row is aged in place (moving it to an
    # older partition).
    aged = await db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE scope = $1",
        f"key:{a['id']}",
    )
    assert aged == "UPDATE 2"  # the key on its day, and its guard on the next

    assert await send(b) == first_b, "B's repeat within its 24 h created a second notification (I5)"
    assert await send(a) != first_a, "A's key, past 24 h, was not forgotten"
    # A's new claim took over A's aged rows; B's key is untouched.
    holders = await db.fetch("SELECT DISTINCT scope, notification_id FROM idempotency_keys WHERE key = 'order-42'")
    assert len(holders) == 2 and {r["scope"] for r in holders} == {f"key:{a['id']}", f"key:{b['id']}"}
    assert (await table_counts(db))["notifications"] == 3
