"""SQL of retention: remove what is finished and older than the retention period, in bounded batches.

Every statement is its own short transaction over at most ``limit`` rows, and takes its rows with
``FOR UPDATE SKIP LOCKED``: it never waits on a row a worker or an ack holds (so it cannot deadlock
with them, whatever order they lock in), and a row it holds is one nobody else wants (finished).

What counts as finished, per delivery (both channels must be):
- socket channel: ``delivered`` or ``expired``; or ``dead`` once its notification's TTL has passed.
  A ``dead`` socket delivery without a passed TTL is still in its user's offline queue (SPEC §4) and
  is kept, like every unacknowledged delivery: nothing open is removed before its notification's TTL.
- webhook channel: none, ``succeeded``, ``expired`` or ``dead``.
- and no DLQ entry of it is waiting for an operator (unreplayed): the entry must stay replayable.
A delivery is removed with its attempt rows when it and its notification are older than the cutoff;
a notification once no delivery of it is left. Replayed DLQ rows and parked poison entries go by age.

Written against the 001 schema; a restructured deliveries table only needs this module adapted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# Oldest notifications first (notifications_created), with a cursor so that old notifications that
# must be kept (open deliveries) are passed once per round, not once per batch.
_DELIVERIES = """
WITH doomed AS (
    SELECT d.notification_id, d.user_id, n.created_at
    FROM notifications n
    JOIN deliveries d ON d.notification_id = n.id
    WHERE n.created_at < $1 AND n.created_at >= $2 AND d.updated_at < $1
      AND (d.status IN ('delivered', 'expired')
           OR (d.status = 'dead' AND n.expires_at IS NOT NULL AND n.expires_at <= now()))
      AND (d.webhook_status IS NULL OR d.webhook_status IN ('succeeded', 'expired', 'dead'))
      AND NOT EXISTS (SELECT 1 FROM dlq q WHERE q.notification_id = d.notification_id
                      AND q.user_id = d.user_id AND q.replayed_at IS NULL)
    ORDER BY n.created_at
    LIMIT $3
    FOR UPDATE OF d SKIP LOCKED
), attempts AS (
    DELETE FROM delivery_attempts a USING doomed
    WHERE a.notification_id = doomed.notification_id AND a.user_id = doomed.user_id
    RETURNING 1
), gone AS (
    DELETE FROM deliveries d USING doomed
    WHERE d.notification_id = doomed.notification_id AND d.user_id = doomed.user_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deliveries, (SELECT count(*) FROM attempts) AS attempts,
       (SELECT max(created_at) FROM doomed) AS last_created
"""

_NOTIFICATIONS = """
WITH doomed AS (
    SELECT n.id, n.created_at FROM notifications n
    WHERE n.created_at < $1 AND n.created_at >= $2
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = n.id)
    ORDER BY n.created_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM notifications n USING doomed WHERE n.id = doomed.id RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS notifications, (SELECT max(created_at) FROM doomed) AS last_created
"""

_DLQ = """
DELETE FROM dlq WHERE id IN (
    SELECT id FROM dlq WHERE replayed_at < $1 ORDER BY replayed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
"""

_POISON = """
DELETE FROM poison_entries WHERE id IN (
    SELECT id FROM poison_entries WHERE failed_at < $1 ORDER BY failed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
"""

_CUTOFF = "SELECT now() - $1 * interval '1 second'"

FIRST = datetime.min.replace(tzinfo=UTC)  # the cursor before any row


async def cutoff(conn: Any, retention_s: float) -> datetime:
    """The server's now() less the retention period (the server's clock decides, as it stamps the rows)."""
    value: datetime = await conn.fetchval(_CUTOFF, retention_s)
    return value


async def remove_deliveries(conn: Any, before: datetime, after: datetime, limit: int) -> tuple[int, int, Any]:
    """(deliveries removed, attempt rows removed, the cursor for the next batch)."""
    row = await conn.fetchrow(_DELIVERIES, before, after, limit)
    return int(row["deliveries"]), int(row["attempts"]), row["last_created"]


async def remove_notifications(conn: Any, before: datetime, after: datetime, limit: int) -> tuple[int, Any]:
    row = await conn.fetchrow(_NOTIFICATIONS, before, after, limit)
    return int(row["notifications"]), row["last_created"]


async def remove_replayed_dlq(conn: Any, before: datetime, limit: int) -> int:
    return int(str(await conn.execute(_DLQ, before, limit)).rsplit(" ", 1)[-1])


async def remove_poison(conn: Any, before: datetime, limit: int) -> int:
    return int(str(await conn.execute(_POISON, before, limit)).rsplit(" ", 1)[-1])
