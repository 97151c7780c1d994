"""SQL of retention that is not partitions (those are store/partitions.py): parked poison entries by age.

Poison entries are few (stream entries that could not even be parsed) and not partitioned; they go in bounded
batches, each its own short transaction that skips rows someone else holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

# Only one process runs a retention round at a time (any number of retry workers run the task).
_TRY_LOCK = "SELECT pg_try_advisory_lock(7349002)"
_UNLOCK = "SELECT pg_advisory_unlock(7349002)"

_POISON = """
DELETE FROM poison_entries WHERE id IN (
    SELECT id FROM poison_entries WHERE failed_at < $1 ORDER BY failed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
"""

_CUTOFF = "SELECT now() - $1 * interval '1 second'"


async def try_lock(conn: Any) -> bool:
    """Take the retention round's session lock if nobody holds it."""
    return bool(await conn.fetchval(_TRY_LOCK))


async def unlock(conn: Any) -> None:
    await conn.execute(_UNLOCK)


async def cutoff(conn: Any, retention_s: float) -> datetime:
    """The server's now() less the retention period (the server's clock decides, as it stamps the rows)."""
    value: datetime = await conn.fetchval(_CUTOFF, retention_s)
    return value


async def remove_poison(conn: Any, before: datetime, limit: int) -> int:
    return int(str(await conn.execute(_POISON, before, limit)).rsplit(" ", 1)[-1])
