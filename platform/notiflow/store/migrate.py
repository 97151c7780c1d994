"""Versioned SQL migrations: ``migrations/NNN_name.sql`` applied once each, in order, under a lock."""

from __future__ import annotations

from importlib import resources

import asyncpg

from notiflow.store import key_partitions, partitions

# Any constant works; it only has to be the same for every process that migrates.
_MIGRATION_LOCK = 0x6E6F7469

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) of every shipped migration, oldest first."""
    folder = resources.files("notiflow.store").joinpath("migrations")
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


async def apply_migrations(
    dsn: str, retention_days: float = 30, *, upto: str | None = None, idempotency_window_s: float = 86_400
) -> list[str]:
    """Apply the migrations this database lacks (those numbered up to ``upto``, e.g. "008", only, when given);
    returns the versions applied now. Then, once the record is partitioned (009), creates the time partitions
    ahead of need, so that a fresh database takes notifications at once; the same for the idempotency keys (013),
    as far ahead as a claim's guards reach under ``idempotency_window_s``.

    ``retention_days`` (NOTIFLOW_RETENTION_DAYS) gives the rows written before 009 their expiry. Concurrent
    callers (several processes starting at once) serialise on an advisory lock, so each migration runs once.
    """
    conn = await asyncpg.connect(dsn, timeout=30)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(_CREATE_TABLE)
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            await conn.execute("SELECT set_config('notiflow.retention_s', $1, false)", str(retention_days * 86400))
            for version, sql in migration_files():
                if upto is not None and version.split("_")[0] > upto.split("_")[0]:
                    break
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
            if partitions.MIGRATION in done or partitions.MIGRATION in applied:
                await partitions.ensure(conn, (await partitions.server_now(conn)).date())
            await key_partitions.ensure(conn, (await partitions.server_now(conn)).date(), idempotency_window_s)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied
