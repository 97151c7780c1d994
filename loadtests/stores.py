"""Where a load run keeps its data: a fresh database and key prefix on given servers (removed afterwards),
or nothing to prepare when the dev stack starts embedded ones. Shared by bench.py and retry_storm.py."""

from __future__ import annotations

import contextlib
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

from notiflow.devstack import psql


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
