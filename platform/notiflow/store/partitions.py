"""SQL of the time partitions (migration 009, docs/record.md): one partition per UTC day of notification ids.

notifications, deliveries and delivery_attempts are partitioned alike: era 0 is the legacy partition (rows from
before the upgrade, random ids), era 1 is range-partitioned by notification id, one partition per UTC day of
the ids' timestamps (``<table>_pYYYYMMDD``). A day's three partitions are created together, ahead of need, and
dropped together once every notification in them has expired: with ttl <= retention, day D is over at
D + 1 day + retention. Dropping is DETACH PARTITION ... CONCURRENTLY (no lock that waits for or blocks ingest and
acks) then DROP TABLE of the detached table: no DELETE, nothing for VACUUM to do. The DLQ rows of a dropped
partition's notifications go with it (dlq is small and not partitioned).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any

from notiflow.ids import lowest_id

#: Partitioned tables, parents first (dropped in the reverse order).
TABLES = ("notifications", "deliveries", "delivery_attempts")
#: Days created ahead of today (server clock), and behind it (a gateway whose clock is slow).
AHEAD_DAYS = 3
BEHIND_DAYS = 1
MIGRATION = "009_time_partitions"

_STORAGE = {"deliveries": " WITH (fillfactor = 50)"}  # as migration 006 set it: room for HOT updates
_DAY_NAME = re.compile(r"^notifications_p(\d{8})$")
# Only one process creates or drops partitions at a time (migrate, any number of retry workers).
_LOCK = 0x6E6F7470

_NOW = "SELECT now()"
_LEAVES = """
SELECT c.relname FROM pg_class c
WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace AND c.relname ~ '^notifications_p[0-9]{8}$'
"""
_ATTACHED = """
SELECT p.relname AS parent, c.relname AS child, i.inhdetachpending AS pending FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = ANY($1::text[])
"""
_UPGRADED_AT = "SELECT applied_at FROM schema_migrations WHERE version = $1"
_DLQ_OF_DAY = "DELETE FROM dlq WHERE notification_id >= $1 AND notification_id < $2"
_DLQ_OF_LEGACY = "DELETE FROM dlq WHERE notiflow_era(notification_id) = 0"


@dataclass(frozen=True, slots=True)
class Partition:
    """A day's partitions (``day``), or the legacy ones (``day`` None), and the time they are over after."""

    day: date | None
    ends: datetime  # no id of it was made at or after this time

    def name(self, table: str) -> str:
        return f"{table}_legacy" if self.day is None else f"{table}_p{self.day:%Y%m%d}"

    def parent(self, table: str) -> str:
        return table if self.day is None else f"{table}_v7"


def day_start(day: date) -> datetime:
    return datetime.combine(day, clock_time(), tzinfo=UTC)


async def server_now(conn: Any) -> datetime:
    value: datetime = await conn.fetchval(_NOW)
    return value


async def ensure(conn: Any, today: date, ahead: int = AHEAD_DAYS, behind: int = BEHIND_DAYS) -> list[date]:
    """Create the day partitions from ``today - behind`` to ``today + ahead`` that do not exist; the days created.
    Each as a plain table attached to its parent (ATTACH takes a lock that does not conflict with writes; CREATE
    TABLE ... PARTITION OF would take one that does)."""
    created: list[date] = []
    for offset in range(-behind, ahead + 1):
        day = today + timedelta(days=offset)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            attached = {r["child"] for r in await conn.fetch(_ATTACHED, [f"{t}_v7" for t in TABLES])}
            if f"notifications_p{day:%Y%m%d}" in attached:
                continue
            lo, hi = lowest_id(day_start(day)), lowest_id(day_start(day + timedelta(days=1)))
            for table in TABLES:
                name = f"{table}_p{day:%Y%m%d}"
                if name in attached:
                    continue
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} (LIKE {table}_v7 INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                    f"{_STORAGE.get(table, '')}"
                )
                await conn.execute(
                    f"ALTER TABLE {table}_v7 ATTACH PARTITION {name} FOR VALUES FROM ('{lo}') TO ('{hi}')"
                )
            created.append(day)
    return created


async def partitions(conn: Any) -> list[Partition]:
    """Every day partition (attached or left detached by an interrupted drop) and the legacy one, oldest first."""
    found: list[Partition] = []
    upgraded = await conn.fetchval(_UPGRADED_AT, MIGRATION)
    if upgraded is not None and await conn.fetchval("SELECT to_regclass('notifications_legacy') IS NOT NULL"):
        found.append(Partition(None, upgraded))
    for r in await conn.fetch(_LEAVES):
        match = _DAY_NAME.match(r["relname"])
        if match:
            day = datetime.strptime(match.group(1), "%Y%m%d").date()
            found.append(Partition(day, day_start(day + timedelta(days=1))))
    return sorted(found, key=lambda p: p.ends)


async def all_expired(conn: Any, part: Partition) -> bool:
    """True when no notification of ``part`` is unexpired (an index lookup of its latest expiry). Also guards a
    day whose ids came from a clock ahead of the server's, or an expiry set under a longer retention period."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", part.name("notifications"))
    if not exists:
        return True
    latest = await conn.fetchval(f"SELECT max(expires_at) FROM {part.name('notifications')}")
    return latest is None or latest <= await server_now(conn)


async def due(conn: Any, retention_s: float) -> list[Partition]:
    """The partitions to drop now: over for a whole retention period, and everything in them expired."""
    now = await server_now(conn)
    return [
        p for p in await partitions(conn)
        if p.ends + timedelta(seconds=retention_s) <= now and await all_expired(conn, p)
    ]


async def finish_detaches(conn: Any) -> int:
    """Finalize detaches that an interrupted DETACH ... CONCURRENTLY left pending; how many."""
    parents = [*TABLES, *(f"{t}_v7" for t in TABLES)]
    pending = [r for r in await conn.fetch(_ATTACHED, parents) if r["pending"]]
    for r in pending:
        await conn.execute(f"ALTER TABLE {r['parent']} DETACH PARTITION {r['child']} FINALIZE")
    return len(pending)


async def drop(conn: Any, part: Partition, timed: list[tuple[str, float]] | None = None) -> int:
    """Drop ``part``'s DLQ rows and its partitions of every table (detached concurrently first); the DLQ rows
    removed. Outside any transaction: DETACH ... CONCURRENTLY cannot run in one. ``timed`` collects each
    statement's time, s."""

    async def run(statement: str, *args: Any) -> str:
        started = time.perf_counter()
        status: str = await conn.execute(statement, *args)
        if timed is not None:
            timed.append((statement.split(" PARTITION ")[0].split(" WHERE ")[0], time.perf_counter() - started))
        return status

    if part.day is None:
        gone = await run(_DLQ_OF_LEGACY)
    else:
        lo, hi = lowest_id(day_start(part.day)), lowest_id(part.ends)
        gone = await run(_DLQ_OF_DAY, lo, hi)
    attached = {r["child"] for r in await conn.fetch(_ATTACHED, [part.parent(t) for t in TABLES])}
    for table in reversed(TABLES):
        name = part.name(table)
        if name in attached:
            await run(f"ALTER TABLE {part.parent(table)} DETACH PARTITION {name} CONCURRENTLY")
        await run(f"DROP TABLE IF EXISTS {name}")
    return int(str(gone).rsplit(" ", 1)[-1])
