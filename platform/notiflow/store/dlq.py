"""SQL of the dead-letter table: list, replay, delete."""

from __future__ import annotations

import uuid
from typing import Any

_LIST = """
SELECT id, notification_id, user_id, channel, reason, last_error, attempts, failed_at
FROM dlq
WHERE replayed_at IS NULL AND id > $1
  AND ($2::text IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR notification_id IN (SELECT id FROM notifications WHERE event = $3))
ORDER BY id LIMIT $4
"""

# Marking the row replayed and resetting the channel happen in one transaction: a second replay of
# the same entry finds it already replayed and creates nothing.
# The entry of an expired notification is not taken: replaying it would deliver nothing (SPEC §4, universal expiry).
_TAKE_FOR_REPLAY = """
UPDATE dlq SET replayed_at = now() WHERE id = $1 AND replayed_at IS NULL
  AND EXISTS (SELECT 1 FROM notifications n WHERE n.id = dlq.notification_id AND n.expires_at > now())
RETURNING notification_id, user_id, channel
"""
_STATE = "SELECT replayed_at IS NOT NULL AS replayed FROM dlq WHERE id = $1"
# A due time: should the replay's XADD fail, the reconciler's stale sweep finds it (store/reconcile.py).
_RESET_SOCKET = """
UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
WHERE notification_id = $1 AND user_id = $2 AND status = 'dead'
"""
_RESET_WEBHOOK = """
UPDATE deliveries SET webhook_status = 'pending', webhook_attempts = 0, webhook_next_at = NULL, updated_at = now()
WHERE notification_id = $1 AND user_id = $2 AND webhook_status = 'dead'
"""
_DELETE = "DELETE FROM dlq WHERE id = $1"
_COUNT_OPEN = "SELECT count(*) FROM dlq WHERE replayed_at IS NULL"
_PURGE = "DELETE FROM dlq WHERE ($1::timestamptz IS NULL OR failed_at < $1)"


async def list_entries(
    conn: Any, *, after: int, user_id: str | None, event: str | None, limit: int
) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_LIST, after, user_id, event, limit)]


#: take_for_replay's answer for the entry of a notification that has expired (left as it is).
EXPIRED = "expired"


async def take_for_replay(conn: Any, entry_id: int) -> tuple[uuid.UUID, str, str] | bool | str | None:
    """Inside a transaction: (notification id, user id, channel) to re-enqueue; False when the entry was
    already replayed; EXPIRED when its notification has expired; None when there is no such entry."""
    row = await conn.fetchrow(_TAKE_FOR_REPLAY, entry_id)
    if row is None:
        replayed = await conn.fetchval(_STATE, entry_id)
        return None if replayed is None else (False if replayed else EXPIRED)
    nid, uid, channel = row["notification_id"], row["user_id"], row["channel"]
    await conn.execute(_RESET_WEBHOOK if channel == "webhook" else _RESET_SOCKET, nid, uid)
    return nid, uid, channel


async def delete_entry(conn: Any, entry_id: int) -> bool:
    return str(await conn.execute(_DELETE, entry_id)).endswith(" 1")


async def purge(conn: Any, older_than: Any = None) -> int:
    return int(str(await conn.execute(_PURGE, older_than)).rsplit(" ", 1)[-1])


async def count_open(conn: Any) -> int:
    """Entries not replayed (an index-only count over dlq_listing)."""
    return int(await conn.fetchval(_COUNT_OPEN))
