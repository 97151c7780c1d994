"""A database written by the schema of migrations 001-008 upgrades in place to the partitioned record (009):
unacknowledged deliveries stay listed in seq order, acknowledged ones never come back, every notification
gets an expiry, and new notifications land in the day partitions, listed after the old ones."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest

from notiflow.ids import new_id
from notiflow.models import NewNotification
from notiflow.store import dlq as dlq_sql
from notiflow.store import ingest as ingest_sql
from notiflow.store import partitions
from notiflow.store import queries as query_sql
from notiflow.store.migrate import apply_migrations

pytestmark = pytest.mark.timeout(60)

OLD_SHAPE = """
INSERT INTO notifications (id, event, payload, recipients, created_at, expires_at, enqueued) VALUES
    ($1, 'old.acked', '{}', 1, now() - interval '2 days', NULL, true),
    ($2, 'old.open', '{"n": 2}', 2, now() - interval '1 day', NULL, true),
    ($3, 'old.ttl', '{}', 1, now() - interval '1 hour', now() + interval '1 day', true),
    ($4, 'old.dead', '{}', 1, now() - interval '1 hour', NULL, true),
    ($5, 'old.stale', '{}', 1, now() - interval '40 days', NULL, true);
INSERT INTO deliveries (notification_id, user_id, seq, status, delivered_at) VALUES
    ($1, 'ann', 1, 'delivered', now()),
    ($2, 'ann', 2, 'offline', NULL), ($2, 'bob', 1, 'dispatched', NULL),
    ($3, 'ann', 3, 'pending', NULL),
    ($4, 'ann', 4, 'dead', NULL),
    ($5, 'bob', 2, 'offline', NULL);
INSERT INTO user_seqs (user_id, last_seq) VALUES ('ann', 4), ('bob', 2);
INSERT INTO delivery_attempts (notification_id, user_id, channel, attempt, outcome, error, node_id, started_at,
                               finished_at)
VALUES ($4, 'ann', 'socket', 1, 'failed', 'boom', 'n', now(), now());
INSERT INTO dlq (notification_id, user_id, channel, reason, attempts) VALUES
    ($4, 'ann', 'socket', 'max_retries_exceeded', 1), ($5, 'bob', 'socket', 'max_retries_exceeded', 1);
"""


async def _ids(conn: asyncpg.Connection, user: str) -> list[tuple[int, uuid.UUID]]:
    return [(r["seq"], r["id"]) for r in await query_sql.offline_page(conn, user, 0, 100)]


async def test_an_own_database_upgrades_in_place(own_database: str) -> None:
    applied = await apply_migrations(own_database, upto="008")
    assert applied[-1].startswith("008") and not any(v.startswith("009") for v in applied)
    acked, open_, ttl, dead, stale = (uuid.uuid4() for _ in range(5))
    conn = await asyncpg.connect(own_database)
    try:
        script = OLD_SHAPE
        for i, nid in enumerate((acked, open_, ttl, dead, stale), 1):
            script = script.replace(f"${i}", f"'{nid}'::uuid")  # our own UUIDs: nothing to escape
        await conn.execute(script)

        assert await apply_migrations(own_database, retention_days=30, upto="009") == [partitions.MIGRATION]

        # Every notification expires: the ones without a ttl a retention period after their creation.
        rows = await conn.fetch("SELECT id, created_at, expires_at FROM notifications")
        assert len(rows) == 5
        for r in rows:
            if r["id"] != ttl:
                assert r["expires_at"] - r["created_at"] == timedelta(days=30)
        # The old rows are in the legacy partition; the day partitions exist for new ones.
        assert {r["p"] for r in await conn.fetch("SELECT DISTINCT tableoid::regclass::text AS p FROM deliveries")} \
            == {"deliveries_legacy"}
        today = (await partitions.server_now(conn)).date()
        assert today in {p.day for p in await partitions.partitions(conn)}
        # The store of today reads and writes the later migrations' columns too: apply them, over the old data.
        await apply_migrations(own_database)

        # The offline queue: unacknowledged ones in seq order (dead included, SPEC §4), the acked one never;
        # the 40-day-old one has expired with the upgrade.
        assert await _ids(conn, "ann") == [(2, open_), (3, ttl), (4, dead)]
        assert await _ids(conn, "bob") == [(1, open_)]

        # A new notification goes to today's partition, numbered after the old ones and listed after them.
        new = NewNotification(new_id(), ["ann", "bob"], "new", "{}", None, None)
        await ingest_sql.insert_notifications(conn, [new], 30 * 86400)
        assert new.seqs == [5, 3]
        where = await conn.fetchval(
            "SELECT tableoid::regclass::text FROM deliveries WHERE notification_id = $1", new.id
        )
        assert where == f"deliveries_p{today:%Y%m%d}"
        assert await _ids(conn, "ann") == [(2, open_), (3, ttl), (4, dead), (5, new.id)]

        # Acks across both partitions remove exactly the named ones.
        assert await query_sql.ack_ids(conn, "ann", [open_, new.id, acked]) == 2
        assert await _ids(conn, "ann") == [(3, ttl), (4, dead)]
        assert await query_sql.ack_up_to(conn, "bob", 3) == 3  # the expired one (not listed) is open still
        assert await _ids(conn, "bob") == []

        # GET /notifications/{id} of an old notification, with its attempts.
        got = await query_sql.get_notification(conn, dead, None, 10)
        assert got is not None and got["status_counts"] == {"dead": 1}
        assert got["deliveries"][0]["attempts"][0]["error"] == "boom"

        # The DLQ: the entry of a live notification replays; the one of the expired notification does not.
        entries = {r["notification_id"]: r["id"] for r in await conn.fetch("SELECT id, notification_id FROM dlq")}
        async with conn.transaction():
            assert await dlq_sql.take_for_replay(conn, entries[dead]) == (dead, "ann", "socket")
            assert await dlq_sql.take_for_replay(conn, entries[stale]) == dlq_sql.EXPIRED
        assert await conn.fetchval("SELECT status FROM deliveries WHERE notification_id = $1", dead) == "pending"
        # Migrating again changes nothing.
        assert await apply_migrations(own_database, upto="009") == []
    finally:
        await conn.close()
