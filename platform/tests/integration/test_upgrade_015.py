"""A database written with the outbox flag (migrations up to 014) upgrades in place to the outbox rows (015):
every notification still flagged as not XADDed gets a row, and the reconciler's outbox reads it; those XADDed
get none. After it, a commit writes one row naming all its notifications, and the flag is no longer written."""

from __future__ import annotations

import asyncpg
import pytest

from notiflow.ids import new_id
from notiflow.models import NewNotification
from notiflow.store import ingest as ingest_sql
from notiflow.store import reconcile as reconcile_sql
from notiflow.store.migrate import apply_migrations

pytestmark = pytest.mark.timeout(60)


def _item(user: str) -> NewNotification:
    return NewNotification(new_id(), [user], "up.015", "{}", None, None)


async def test_flagged_notifications_get_outbox_rows_and_new_commits_write_one_row_each(own_database: str) -> None:
    await apply_migrations(own_database, upto="014")
    conn = await asyncpg.connect(own_database)
    try:
        xadded, not_yet = _item("ann"), _item("bob")
        for item in (xadded, not_yet):
            # What the ingest of before 015 wrote: the notification with its flag false.
            await conn.execute(
                "INSERT INTO notifications (id, event, payload, recipients, expires_at, era, created_at)"
                " VALUES ($1, 'up.015', '{}', 1, now() + interval '1 day', notiflow_era($1),"
                " now() - interval '1 minute')",
                item.id,
            )
        await conn.execute("UPDATE notifications SET enqueued = true WHERE id = $1", xadded.id)

        assert [v for v in await apply_migrations(own_database, upto="015") if v.startswith("015")]
        rows, named = await reconcile_sql.outbox(conn, 1.0, 100)
        assert named == [not_yet.id] and len(rows) == 1
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('notifications_v7_outbox', 'notifications_outbox')"
        )

        batch = [_item("cat"), _item("dan"), _item("cat")]
        outbox_id = await ingest_sql.insert_notifications(conn, batch)
        row = await conn.fetchrow("SELECT notification_ids FROM ingest_outbox WHERE id = $1", outbox_id)
        assert row["notification_ids"] == [i.id for i in batch]
        assert await ingest_sql.insert_notifications(conn, []) is None  # nothing committed: no row
    finally:
        await conn.close()
