"""A connection that stalls inside a transaction holds a user's ingest only within documented bounds (issue 24,
window 5): a request that waits for the stalled transaction's row locks is answered 503 ``store_busy`` (nothing
stored) after ``pg_lock_timeout_ms``, and PostgreSQL ends the stalled session after
``pg_idle_in_transaction_timeout_ms``, after which ingest for that user succeeds again."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from helpers import wait_for
from integration_support import Gateways, notify, offline_ids, post, users

from notiflow.config import Settings
from notiflow.models import NewNotification
from notiflow.store.ingest import insert_notifications
from notiflow.store.pool import connect_pool, pg_limits

LOCK_TIMEOUT_MS = 1000
IDLE_TIMEOUT_MS = 3000


async def test_a_stalled_transaction_holds_a_users_ingest_only_within_the_bounds(
    gateways: Gateways, http: httpx.AsyncClient, settings: Settings
) -> None:
    node = await gateways.start(pg_lock_timeout_ms=LOCK_TIMEOUT_MS, pg_idle_in_transaction_timeout_ms=IDLE_TIMEOUT_MS)
    [ivy, other] = users(2, "stall")
    # Another notiflow process (the same settings, so the same session bounds) stalls in the middle of an
    # ingest for ivy: its transaction has taken her rows' locks, and it never commits.
    stalled_pool = await connect_pool(settings.database_url_required, max_size=1, **pg_limits(node.settings))
    try:
        stalled = await stalled_pool.acquire()
        await stalled.execute("BEGIN")
        await insert_notifications(stalled, [NewNotification(uuid.uuid4(), [ivy], "test.event", "{}", None, None)])

        # Until the refusal is seen the transaction keeps running short statements, so that the idle bound cannot
        # end it before the request has waited on its lock however slow this machine is; then it goes idle.
        refused = asyncio.Event()

        async def busy_until_refused() -> None:
            while not refused.is_set():
                await stalled.execute("SELECT pg_sleep(0.05)")

        busy = asyncio.create_task(busy_until_refused())
        body = {"user_id": ivy, "event": "test.event", "payload": {}}
        try:
            blocked = await http.post(f"{node.url}/notifications", json=body, timeout=120)
        finally:
            refused.set()
            await asyncio.wait_for(busy, timeout=10)
        assert blocked.status_code == 503, blocked.text
        assert blocked.json()["error"]["code"] == "store_busy", blocked.text
        assert blocked.headers["retry-after"] == "1"
        await notify(http, node.url, [other])  # other users' ingest is not held up

        # PostgreSQL ends the stalled session once it has been idle in its transaction for the bound; the
        # client retries until its request is accepted (waits bounded generously: the machine may be loaded).
        async def accepted() -> str | None:
            response = await post(http, node.url, body, expect=None)
            assert response.status_code in (202, 503), response.text
            return str(response.json()["id"]) if response.status_code == 202 else None

        nid = await wait_for(accepted, timeout_s=IDLE_TIMEOUT_MS / 1000 + 60, interval_s=0.2)
        # The stalled session was ended and its transaction rolled back, and the refused request stored
        # nothing: only the accepted one is listed.
        assert await offline_ids(http, node.url, ivy) == [nid]
    finally:
        stalled_pool.terminate()
