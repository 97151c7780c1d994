"""A batch that mixes carried (fresh) entries with entries whose rows must be loaded: each kind is processed.

Regression: deliver_socket compared the number of fresh entries plus the deliveries of expired carried
entries with the number of entries, so an expired carried entry with two recipients hid a loaded entry of
the same batch, which was then neither delivered nor recorded (found reading the change)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from integration_support import insert_pending

from notiflow.config import Settings
from notiflow.models import Carried, StreamEntry
from notiflow.worker import factory

pytestmark = pytest.mark.timeout(30)


async def test_an_expired_carried_entry_does_not_hide_a_loaded_one(settings: Settings, db: asyncpg.Pool) -> None:
    expired = await insert_pending(db, ["x1", "x2"])
    await db.execute("UPDATE notifications SET expires_at = now() - interval '1 second' WHERE id = $1", expired)
    loaded = await insert_pending(db, ["y1"])
    past_ms = int((datetime.now(UTC) - timedelta(seconds=1)).timestamp() * 1000)
    batch = [
        StreamEntry(expired, ("x1", "x2"), carried=Carried((1, 1), "e", "{}", datetime.now(UTC), past_ms)),
        StreamEntry(loaded, ("y1",)),
    ]
    async with factory.stream_worker(settings) as worker:
        deliveries = worker._d
        outcomes = await deliveries.deliver_socket(batch)
        assert sorted((o.user_id, o.status) for o in outcomes) == [("x1", "expired"), ("x2", "expired")]
        await deliveries.dispatch_log.flush()
    rows = await db.fetch("SELECT notification_id, user_id, status FROM deliveries ORDER BY user_id")
    assert [(r["user_id"], r["status"]) for r in rows] == [("x1", "expired"), ("x2", "expired"), ("y1", "offline")]
    assert {r["notification_id"] for r in rows} == {expired, loaded}
