"""A database of migrations 001-012 upgrades in place to idempotency keys in day partitions (013): the old table
becomes the legacy partition, its live keys keep holding (a repeat gets the first response), its aged ones can
be claimed again, and new keys land in today's partition."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from notiflow.config import Settings
from notiflow.ids import new_id
from notiflow.models import NewNotification
from notiflow.service.retention import RetentionService
from notiflow.store import ingest as ingest_sql
from notiflow.store import key_partitions, partitions
from notiflow.store.migrate import apply_migrations
from notiflow.store.pool import connect_pool

pytestmark = pytest.mark.timeout(60)

OLD_KEYS = """
INSERT INTO idempotency_keys (scope, key, request_hash, notification_id, response, created_at) VALUES
    ('a', 'fresh', 'h-fresh', gen_random_uuid(), '{"id": "fresh"}', now() - interval '2 hours'),
    ('a', 'older', 'h-older', gen_random_uuid(), '{"id": "older"}', now() - interval '23 hours'),
    ('a', 'aged', 'h-aged', gen_random_uuid(), '{"id": "aged"}', now() - interval '25 hours'),
    ('b', 'fresh', 'h-b', gen_random_uuid(), '{"id": "b"}', now() - interval '1 hour')
"""


def keyed(scope: str, key: str) -> NewNotification:
    return NewNotification(
        new_id(), ["ann"], "e", "{}", None, None, idempotency_key=key, idempotency_scope=scope, request_hash="h-new"
    )


async def test_old_keys_stay_honoured_within_their_window_after_the_upgrade(own_database: str) -> None:
    await apply_migrations(own_database, upto="012")
    conn = await asyncpg.connect(own_database)
    try:
        assert await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'idempotency_keys'") == "r"
        await conn.execute(OLD_KEYS)

        assert "013_idempotency_partitions" in await apply_migrations(own_database)

        assert await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'idempotency_keys'") == "p"
        where = {r[0] for r in await conn.fetch("SELECT DISTINCT tableoid::regclass::text FROM idempotency_keys")}
        assert where == {key_partitions.LEGACY}, "the old rows were moved"
        today = (await partitions.server_now(conn)).date()
        names = [k.name for k in await key_partitions.partitions(conn)]
        assert key_partitions.LEGACY in names and f"idempotency_keys_p{today:%Y%m%d}" in names

        async with conn.transaction():
            claim = await ingest_sql.claim_idempotency_keys(
                conn, [keyed("a", "fresh"), keyed("a", "older"), keyed("a", "aged"), keyed("b", "fresh")], 86_400
            )
        assert claim.won == {("a", "aged")}
        assert claim.existing == {
            ("a", "fresh"): ("h-fresh", {"id": "fresh"}),
            ("a", "older"): ("h-older", {"id": "older"}),
            ("b", "fresh"): ("h-b", {"id": "b"}),
        }
        where = await conn.fetch(
            "SELECT tableoid::regclass::text AS p FROM idempotency_keys WHERE key = 'aged' AND request_hash = 'h-new'"
        )
        tomorrow = today + timedelta(days=1)
        assert sorted(r["p"] for r in where) == [
            f"idempotency_keys_p{today:%Y%m%d}",
            f"idempotency_keys_p{tomorrow:%Y%m%d}",
        ]
        # The legacy partition goes a window after its newest key, not before.
        p = await connect_pool(own_database, max_size=1)
        try:
            assert (await RetentionService(Settings(database_url=own_database), p).run_once())[
                "key_partitions_dropped"
            ] == 0
            short = Settings(database_url=own_database, idempotency_window_s=1800)  # its newest key is 1 h old
            await RetentionService(short, p).run_once()
        finally:
            await p.close()
        assert None is await conn.fetchval("SELECT to_regclass('idempotency_keys_legacy')")
        # Migrating again changes nothing.
        assert await apply_migrations(own_database) == []
    finally:
        await conn.close()
