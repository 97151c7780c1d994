"""Connection pool and the mapping of driver errors onto notiflow's transient/permanent split."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypedDict, TypeVar

import asyncpg
import orjson
from asyncpg.pool import Pool

from notiflow import metrics
from notiflow.config import Settings
from notiflow.errors import CommitOutcomeUnknown, StoreBusy, StoreUnavailable

__all__ = [
    "Pool", "close_pool", "connect_pool", "pg_errors", "pg_limits", "pg_write_errors", "retry_conflicts",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

# Lost a deadlock or a serialization race: the statement did nothing and may simply run again.
_CONFLICT_SQLSTATES = ("40P01", "40001")
CONFLICT_ATTEMPTS = 4

# Errors after which the same statement may well succeed: the server went away, failed over,
# was too busy, or our transaction lost a deadlock or serialization race, or waited past lock_timeout.
_LOCK_NOT_AVAILABLE = "55P03"
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P", "40", _LOCK_NOT_AVAILABLE)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | ConnectionError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)


def _lock_wait_exceeded(what: str, exc: BaseException) -> StoreBusy | None:
    """A statement that waited past lock_timeout: PostgreSQL rolled its transaction back, nothing of it
    was written (whether it was sent or not)."""
    if getattr(exc, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
        return None
    metrics.PG_ERRORS.labels(what).inc()
    return StoreBusy(f"postgresql: {what}: a row it needs stayed locked by another transaction past lock_timeout")


@asynccontextmanager
async def pg_errors(what: str) -> AsyncIterator[None]:
    """Re-raise connection-level and retryable PostgreSQL errors as StoreUnavailable."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        busy = _lock_wait_exceeded(what, exc)
        if busy is not None:
            raise busy from exc
        if _is_transient(exc):
            metrics.PG_ERRORS.labels(what).inc()
            raise StoreUnavailable(f"postgresql: {what}: {type(exc).__name__}: {exc}") from exc
        raise


@asynccontextmanager
async def pg_write_errors(what: str) -> AsyncIterator[None]:
    """Like ``pg_errors`` around statements that write: a transient failure once the write is on its way
    has an unknown outcome (``CommitOutcomeUnknown``), not "nothing happened"."""
    try:
        yield
    except (CommitOutcomeUnknown, StoreBusy):
        raise
    except Exception as exc:
        busy = _lock_wait_exceeded(what, exc)
        if busy is not None:
            raise busy from exc
        cause = exc.__cause__ if isinstance(exc, StoreUnavailable) else exc
        if isinstance(exc, StoreUnavailable) or _is_transient(exc):
            raise CommitOutcomeUnknown(f"postgresql: {what}: {type(cause).__name__}: {cause}") from exc
        raise


async def retry_conflicts(run: Callable[[], Awaitable[T]]) -> T:
    """Run ``run`` again (a few times, with a short random pause) when PostgreSQL aborted it as the
    victim of a deadlock or a serialization conflict; other errors pass through at once."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return await run()
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, StoreUnavailable) else exc
            if attempt == CONFLICT_ATTEMPTS or getattr(cause, "sqlstate", None) not in _CONFLICT_SQLSTATES:
                raise
            await asyncio.sleep(random.uniform(0.001, 0.01 * attempt))
    raise AssertionError("unreachable")


async def _keep_session(conn: Any) -> None:
    """Release without asyncpg's default reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL),
    a round trip per release: notiflow keeps no session state (only SET LOCAL and transaction-scoped
    advisory locks), and asyncpg still rolls back a transaction left open before calling this."""


async def _init_connection(conn: Any) -> None:
    # jsonb comes back as text so that payloads can be spliced into frames without a decode/encode.
    await conn.set_type_codec("jsonb", encoder=lambda v: v, decoder=lambda v: v, schema="pg_catalog")
    await conn.set_type_codec(
        "json", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
    )


class SessionLimits(TypedDict):
    lock_timeout_ms: int
    idle_in_transaction_timeout_ms: int


def pg_limits(settings: Settings) -> SessionLimits:
    """``connect_pool``'s session bounds from the process's settings."""
    return SessionLimits(
        lock_timeout_ms=settings.pg_lock_timeout_ms,
        idle_in_transaction_timeout_ms=settings.pg_idle_in_transaction_timeout_ms,
    )


async def connect_pool(
    dsn: str, *, max_size: int, min_size: int = 1, lock_timeout_ms: int = 0, idle_in_transaction_timeout_ms: int = 0,
    application_name: str | None = None,
) -> Pool:
    """A pool whose connections fail fast: a dead server must surface as an error, not a hang.

    ``lock_timeout_ms`` bounds a statement's wait for a lock (it then fails with LockNotAvailable, raised as
    ``StoreBusy``), and ``idle_in_transaction_timeout_ms`` has PostgreSQL end a session of this pool that
    stalls inside a transaction, so that its locks go with it (0: no bound; both are set per session at
    connect, no round trip). ``application_name``: what its sessions show in ``pg_stat_activity`` (PostgreSQL
    keeps the first 63 bytes)."""
    server_settings = {
        "lock_timeout": str(lock_timeout_ms),
        "idle_in_transaction_session_timeout": str(idle_in_transaction_timeout_ms),
    }
    if application_name is not None:
        server_settings["application_name"] = application_name
    async with pg_errors("connect"):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min(min_size, max_size),
            max_size=max_size,
            server_settings=server_settings,
            init=_init_connection,
            reset=_keep_session,
            command_timeout=30,
            timeout=10,
            max_inactive_connection_lifetime=60,
        )
    assert pool is not None
    return pool


async def close_pool(pool: Pool, timeout_s: float) -> None:
    """Close ``pool`` within ``timeout_s``. ``Pool.close`` waits for every connection to be released, with
    no bound: a connection never given back (a caller that hangs with it) would hold a process's stop past
    its supervisor's patience. Past ``timeout_s`` the pool
    is terminated (asyncpg does so when its close is cancelled): the server rolls back whatever was open,
    and nothing was acknowledged on the strength of it."""
    try:
        await asyncio.wait_for(pool.close(), timeout=timeout_s)
    except TimeoutError:
        log.warning("postgresql pool not released in time: terminated", extra={"timeout_s": timeout_s})
