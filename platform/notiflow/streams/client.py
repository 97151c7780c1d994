"""Redis connections, and the mapping of redis-py errors onto notiflow's transient/permanent split."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notiflow.errors import StoreUnavailable

Redis = aioredis.Redis


POOL_WAIT_S = 5.0  # how long a command waits for a free connection of the pool before it fails


def connect_redis(url: str, *, max_connections: int = 64) -> Redis:
    """A client that fails fast and retries nothing itself: retries are the caller's policy.

    The pool is a blocking one: a burst of commands (a thousand sockets registering at once) waits a
    moment for a free connection instead of failing with "Too many connections" past ``max_connections``.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_connect_timeout=5,
        socket_timeout=15,
        health_check_interval=10,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def is_nogroup(exc: BaseException) -> bool:
    """The consumer group (or the stream) is gone: Redis restarted without its data. Redis 7 answers a
    reader blocked on the stream when that happens with ``UNBLOCKED``, the others with ``NOGROUP``."""
    return isinstance(exc, ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED"))


@asynccontextmanager
async def redis_errors(what: str) -> AsyncIterator[None]:
    """Re-raise connection-level Redis errors (and LOADING/BUSY answers) as StoreUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"redis: {what}: {type(exc).__name__}: {exc}") from exc
    except ResponseError as exc:
        if str(exc).startswith(("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY")):
            raise StoreUnavailable(f"redis: {what}: {exc}") from exc
        raise
    except RedisError as exc:
        raise StoreUnavailable(f"redis: {what}: {type(exc).__name__}: {exc}") from exc
