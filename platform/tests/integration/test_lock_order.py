"""Acks and the stream worker's outcome writes on the same deliveries must not deadlock.

Both are multi-row updates of ``deliveries``. They used to lock rows in whatever order their joins
produced, so a client acking a batch while the worker recorded that batch's outcomes deadlocked
(found by loadtests/bench.py --fanout 50: 1,145 socket acks dropped in one run). Every such statement
now locks its rows in primary-key order first.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from notiflow.config import Settings
from notiflow.models import NewNotification, Outcome
from notiflow.store import deliveries as outcomes_sql
from notiflow.store import ingest as ingest_sql
from notiflow.store import queries as queries_sql
from notiflow.store.pool import Pool, connect_pool

pytestmark = pytest.mark.timeout(90)

RECIPIENTS = 300
ROUNDS = 25


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[Pool]:
    p = await connect_pool(settings.database_url_required, max_size=4)
    try:
        yield p
    finally:
        await p.close()


async def test_socket_acks_and_outcome_writes_on_the_same_rows_never_deadlock(pool: Pool) -> None:
    nid = uuid.uuid4()
    # Users whose text order differs from their insertion order, so that no plan is ordered by chance.
    users = [f"u{(i * 7919) % RECIPIENTS:04d}-{i}" for i in range(RECIPIENTS)]
    async with pool.acquire() as conn:
        await ingest_sql.insert_notifications(
            conn, [NewNotification(nid, users, "lock.test", "{}", None, "http://127.0.0.1:9/h")]
        )
    now = datetime.now(UTC)

    def retrying(user: str) -> Outcome:
        return Outcome(nid, user, "webhook", 1, "failed", "retrying", "test", now, now, error="x", next_attempt_at=now)

    async def record(order: list[str]) -> None:
        async with pool.acquire() as conn:
            await outcomes_sql.record_outcomes(conn, [retrying(u) for u in order], "test")

    async def ack(order: list[str]) -> None:
        async with pool.acquire() as conn:
            await queries_sql.ack_pairs(conn, [(u, str(nid)) for u in order])

    for _ in range(ROUNDS):
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE deliveries SET status = 'dispatched', webhook_status = 'pending' WHERE notification_id = $1",
                nid,
            )
        # Opposite orders in the two statements, and both touch every row.
        await asyncio.gather(record(users), ack(users[::-1]), record(users[::-1]), ack(users))
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, webhook_status FROM deliveries WHERE notification_id = $1", nid)
    assert {(r["status"], r["webhook_status"]) for r in rows} == {("delivered", "retrying")}
