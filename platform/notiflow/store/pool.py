"""Connection pool and the mapping of driver errors onto notiflow's transient/permanent split."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import Pool

from notiflow.errors import StoreUnavailable

__all__ = ["Pool", "connect_pool", "pg_errors"]

# Errors after which the same statement may well succeed: the server went away, failed over,
# was too busy, or our transaction lost a deadlock or serialization race.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P", "40")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | ConnectionError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)


@asynccontextmanager
async def pg_errors(what: str) -> AsyncIterator[None]:
    """Re-raise connection-level and retryable PostgreSQL errors as StoreUnavailable."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if _is_transient(exc):
            raise StoreUnavailable(f"postgresql: {what}: {type(exc).__name__}: {exc}") from exc
        raise


async def _init_connection(conn: Any) -> None:
    # jsonb comes back as text so that payloads can be spliced into frames without a decode/encode.
    await conn.set_type_codec("jsonb", encoder=lambda v: v, decoder=lambda v: v, schema="pg_catalog")
    await conn.set_type_codec(
        "json", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
    )


async def connect_pool(dsn: str, *, max_size: int, min_size: int = 1) -> Pool:
    """A pool whose connections fail fast: a dead server must surface as an error, not a hang."""
    async with pg_errors("connect"):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min(min_size, max_size),
            max_size=max_size,
            init=_init_connection,
            command_timeout=30,
            timeout=10,
            max_inactive_connection_lifetime=60,
        )
    assert pool is not None
    return pool
