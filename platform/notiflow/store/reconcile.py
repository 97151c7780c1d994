"""SQL of the reconciler: find committed work that Redis does not hold, and housekeeping sweeps."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

# Only one reconciler works at a time; the others skip the round (any number may run safely).
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(7349001)"

# Notifications committed but never marked as XADDed (a crash or a Redis fault between the two).
_OUTBOX = """
SELECT id FROM notifications WHERE NOT enqueued AND created_at < now() - $1 * interval '1 second'
ORDER BY created_at LIMIT $2
"""

# Work that must be in the stream (pending) or in the retry schedule (retrying), keyset by key.
# `stale_s` limits it to rows untouched for that long (the stuck-work sweep); 0 takes everything
# (the rebuild after Redis lost its data).
_WORK = """
SELECT d.notification_id, d.user_id, d.status, d.webhook_status, d.next_attempt_at, d.webhook_next_at
FROM deliveries d
WHERE (d.status IN ('pending', 'retrying') OR d.webhook_status IN ('pending', 'retrying'))
  AND (d.notification_id, d.user_id) > ($1::uuid, $2::text)
  AND ($3::uuid[] IS NULL OR d.notification_id = ANY($3::uuid[]))
  AND d.updated_at < now() - $4 * interval '1 second'
ORDER BY d.notification_id, d.user_id
LIMIT $5
"""

_TOUCH = """
WITH locked AS (
    SELECT notification_id, user_id FROM deliveries
    WHERE (notification_id, user_id) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
    ORDER BY notification_id, user_id FOR UPDATE
)
UPDATE deliveries d SET updated_at = now()
FROM locked l WHERE d.notification_id = l.notification_id AND d.user_id = l.user_id
"""

_EXPIRE = """
WITH due AS (
    SELECT d.notification_id, d.user_id FROM deliveries d JOIN notifications n ON n.id = d.notification_id
    WHERE n.expires_at <= now()
      AND (d.status IN ('pending', 'dispatched', 'offline', 'retrying')
           OR d.webhook_status IN ('pending', 'retrying'))
    ORDER BY d.notification_id, d.user_id
    LIMIT $1
    FOR UPDATE OF d
)
UPDATE deliveries d
SET status = CASE WHEN d.status IN ('pending', 'dispatched', 'offline', 'retrying') THEN 'expired' ELSE d.status END,
    webhook_status = CASE WHEN d.webhook_status IN ('pending', 'retrying') THEN 'expired' ELSE d.webhook_status END,
    updated_at = now()
FROM due WHERE d.notification_id = due.notification_id AND d.user_id = due.user_id
"""

_FORGET_KEYS = """
DELETE FROM idempotency_keys WHERE key IN (
    SELECT key FROM idempotency_keys WHERE created_at < now() - interval '24 hours' LIMIT $1)
"""

_ZERO_UUID = uuid.UUID(int=0)


async def try_lock(conn: Any) -> bool:
    return bool(await conn.fetchval(_TRY_LOCK))


async def outbox(conn: Any, grace_s: float, limit: int) -> list[uuid.UUID]:
    return [r["id"] for r in await conn.fetch(_OUTBOX, grace_s, limit)]


async def work_page(
    conn: Any,
    *,
    after: tuple[uuid.UUID, str] | None,
    notification_ids: list[uuid.UUID] | None,
    stale_s: float,
    limit: int,
) -> list[dict[str, Any]]:
    nid, uid = after or (_ZERO_UUID, "")
    return [dict(r) for r in await conn.fetch(_WORK, nid, uid, notification_ids, stale_s, limit)]


async def touch(conn: Any, keys: list[tuple[uuid.UUID, str]]) -> None:
    if keys:
        await conn.execute(_TOUCH, [k[0] for k in keys], [k[1] for k in keys])


async def expire_due(conn: Any, limit: int) -> int:
    return int(str(await conn.execute(_EXPIRE, limit)).rsplit(" ", 1)[-1])


async def forget_old_keys(conn: Any, limit: int) -> int:
    return int(str(await conn.execute(_FORGET_KEYS, limit)).rsplit(" ", 1)[-1])


def due_ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)
