"""Where a load run keeps its data: a fresh database and key prefix on given servers (removed afterwards),
or embedded servers when none is given. Shared by the load scripts: ``Stores`` for the ones that start a
stack (bench.py, retry_storm.py, ...), ``Stores.database``/``Stores.redis`` for the ones that also run on
embedded servers, and ``fresh_database`` for the measuring scripts (pg_floor.py, collapse_floor.py, ...)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from backend_cpu import Meter

from notiflow.devstack import EmbeddedPostgres, EmbeddedRedis, migrate, psql
from notiflow.store.migrate import apply_migrations

NEEDS_SERVER = "set NOTIFLOW_DATABASE_URL to a PostgreSQL server on this machine"


class Stores:
    """Fresh database / key prefix on given servers, or nothing to do for embedded ones."""

    def __init__(self, name: str) -> None:
        self.redis_url = os.environ.get("NOTIFLOW_REDIS_URL") or None
        self.admin_db = os.environ.get("NOTIFLOW_DATABASE_URL") or None
        self.database_url: str | None = None
        self.db_name: str | None = None
        self.name = name
        self.prefix = f"nf{name}{secrets.token_hex(4)}"

    def prepare(self, tablespace: str | None = None) -> None:
        """Create the database (in ``tablespace``, an existing one, when given: where its files go)."""
        if self.admin_db:
            self.db_name = f"notiflow_{self.name}_{secrets.token_hex(4)}"
            where = f' TABLESPACE "{tablespace}"' if tablespace else ""
            psql(self.admin_db, f'CREATE DATABASE "{self.db_name}"{where}')
            parts = urlsplit(self.admin_db)
            self.database_url = urlunsplit((parts.scheme, parts.netloc, f"/{self.db_name}", parts.query, ""))

    def database(self, stack: contextlib.ExitStack, workdir: Path) -> str:
        """The fresh database (after ``prepare``), or else an embedded PostgreSQL in ``workdir``, stopped when
        ``stack`` closes; migrated (``python -m notiflow migrate``, as a deployment) either way."""
        url = self.database_url or stack.enter_context(EmbeddedPostgres(workdir)).url
        migrate(url)
        return url

    def redis(self, stack: contextlib.ExitStack, workdir: Path) -> str:
        """The given Redis, or else an embedded one in ``workdir``, stopped when ``stack`` closes."""
        return self.redis_url or stack.enter_context(EmbeddedRedis(workdir)).url

    def cleanup(self) -> None:
        if self.admin_db and self.db_name:
            with contextlib.suppress(Exception):
                psql(self.admin_db, f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        if self.redis_url:
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis.from_url(self.redis_url)
                for key in client.scan_iter(match=f"{self.prefix}*", count=1000):
                    client.delete(key)
                client.close()


@dataclass(frozen=True, slots=True)
class FreshDatabase:
    """A migrated database of a run's own, one connection on it, and the CPU meter of that connection's backend."""

    url: str
    conn: Any
    meter: Meter


@contextlib.asynccontextmanager
async def fresh_database(name: str, *, upto: str | None = None, keep: bool = False) -> AsyncIterator[FreshDatabase]:
    """A fresh database on the server of NOTIFLOW_DATABASE_URL (on this machine: the meter reads /proc), migrated
    to head (``python -m notiflow migrate``) or up to ``upto`` only, with one connection open on it; the
    connection is closed and the database dropped afterwards, or kept with ``keep`` (its URL printed)."""
    stores = Stores(name)
    if not stores.admin_db:
        raise SystemExit(NEEDS_SERVER)
    stores.prepare()
    assert stores.database_url is not None
    try:
        if upto is None:
            migrate(stores.database_url)
        else:
            await apply_migrations(stores.database_url, upto=upto)
        conn = await asyncpg.connect(stores.database_url)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            yield FreshDatabase(stores.database_url, conn, Meter(conn, pid))
        finally:
            await conn.close()
    finally:
        if keep:
            print("kept", stores.database_url)
        else:
            stores.cleanup()
