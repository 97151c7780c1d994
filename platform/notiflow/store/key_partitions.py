"""SQL of the idempotency keys' time partitions (migration 013, docs/record.md): one per UTC day.

A key lives ``IDEMPOTENCY_WINDOW_S`` (24 h by default), not the record's retention period, so the keys have
partitions of their own, by their ``day`` column: ``idempotency_keys_pYYYYMMDD`` holds the keys claimed on that day
(PostgreSQL's clock, as it stamps ``created_at``) and the guards of the keys claimed in the days before it that
their window reaches (copies that make a later claim of the key meet it in the unique (scope, key, day) index,
see the migration); ``idempotency_keys_legacy`` (day -infinity) holds the keys of before the upgrade. Every row of
a day partition was claimed before the day's end, so the partition is dropped once its end is a window past;
the legacy one a window after its newest key. Each day partition is a plain table with its unique index,
attached (a lock that does not block claims), and detached concurrently before its DROP: no DELETE, nothing for
VACUUM. Partitions are made from yesterday to ``AHEAD_DAYS`` ahead, and at least as far as a claim's guards reach.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from notiflow.store.partitions import AHEAD_DAYS, BEHIND_DAYS, day_start

PARENT = "idempotency_keys"
LEGACY = f"{PARENT}_legacy"
DAY_S = 86_400
# The same lock as the record's partitions: one process creates or drops partitions at a time.
_LOCK = 0x6E6F7470
_DAY_NAME = re.compile(rf"^{PARENT}_p(\d{{8}})$")

_PARTITIONED = f"SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('{PARENT}')"
_CHILDREN = f"""
SELECT c.relname, i.inhdetachpending AS pending
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '{PARENT}'::regclass
"""
_DAYS = f"""
SELECT c.relname FROM pg_class c
WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace AND c.relname ~ '^{PARENT}_p[0-9]{{8}}$'
"""
_LEGACY_NEWEST = f"SELECT coalesce(max(created_at), 'epoch') FROM {LEGACY}"


@dataclass(frozen=True, slots=True)
class KeyPartition:
    """One partition of the keys: its table and the time no key of it was claimed at or after."""

    name: str
    ends: datetime


def guard_days(window_s: float) -> int:
    """Days after its own on which a claim writes a guard: as many as its window reaches into."""
    return max(1, math.ceil(window_s / DAY_S))


async def is_partitioned(conn: Any) -> bool:
    """True once migration 013 is applied."""
    return bool(await conn.fetchval(_PARTITIONED))


async def ensure(conn: Any, today: date, window_s: float = DAY_S, *, behind: int = BEHIND_DAYS) -> list[date]:
    """Create the day partitions of the keys from ``today - behind`` to ``AHEAD_DAYS`` ahead, or as far as the
    guards of a claim made tomorrow reach, that are missing; the days created."""
    if not await is_partitioned(conn):
        return []
    ahead = max(AHEAD_DAYS, guard_days(window_s) + 1)
    created: list[date] = []
    for offset in range(-behind, ahead + 1):
        day = today + timedelta(days=offset)
        name = f"{PARENT}_p{day:%Y%m%d}"
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            if name in {r["relname"] for r in await conn.fetch(_CHILDREN)}:
                continue
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {name} (LIKE {PARENT} INCLUDING DEFAULTS)")
            await conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {name}_key ON {name} (scope, key, day)")
            # Our own dates, inlined: DDL takes no parameters.
            await conn.execute(
                f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM ('{day}') "
                f"TO ('{day + timedelta(days=1)}')"
            )
            created.append(day)
    return created


async def partitions(conn: Any) -> list[KeyPartition]:
    """Every partition of the keys (attached, or left detached by an interrupted drop), oldest first."""
    if not await is_partitioned(conn):
        return []
    found: list[KeyPartition] = []
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", LEGACY):
        found.append(KeyPartition(LEGACY, await conn.fetchval(_LEGACY_NEWEST)))
    for r in await conn.fetch(_DAYS):
        match = _DAY_NAME.match(r["relname"])
        if match:
            day = datetime.strptime(match.group(1), "%Y%m%d").date()
            found.append(KeyPartition(r["relname"], day_start(day + timedelta(days=1))))
    return sorted(found, key=lambda p: p.ends)


async def due(conn: Any, window_s: float, now: datetime) -> list[KeyPartition]:
    """The partitions whose every key has aged out at ``now`` (server clock): over for a whole window (the legacy
    partition's end is its newest key; 1970 when it has none)."""
    return [p for p in await partitions(conn) if p.ends <= now - timedelta(seconds=window_s)]


async def finish_detaches(conn: Any) -> int:
    """Finalize the detaches that an interrupted drop left pending; how many."""
    pending = [r["relname"] for r in await conn.fetch(_CHILDREN) if r["pending"]]
    for name in pending:
        await conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {name} FINALIZE")
    return len(pending)


async def drop(conn: Any, part: KeyPartition) -> None:
    """Detach ``part`` concurrently (it waits for the claims that may still read it, blocking none) and drop
    it. Outside any transaction, as DETACH ... CONCURRENTLY requires."""
    attached = {r["relname"] for r in await conn.fetch(_CHILDREN)}
    if part.name in attached:
        await conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {part.name} CONCURRENTLY")
    await conn.execute(f"DROP TABLE IF EXISTS {part.name}")
