"""Redis connections, and the mapping of redis-py errors onto notiflow's transient/permanent split."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, MasterDownError, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notiflow import metrics
from notiflow.errors import StoreUnavailable

Redis = aioredis.Redis

log = logging.getLogger(__name__)


def connect_redis(
    url: str, *, max_connections: int = 64, wait_timeout_s: float = 5.0, cluster: bool = False,
    client_name: str | None = None,
) -> Redis:
    """A client that retries nothing itself (retries are the caller's policy) on a blocking pool: a command
    that finds all ``max_connections`` busy waits up to ``wait_timeout_s`` for one to come free. The default
    pool answers that command with "Too many connections" at once, so a burst of sockets registering at the
    same moment (a reconnect storm) had some of them closed with 1011 while the pool was merely busy.

    ``cluster``: redis-py's cluster client with ``url`` as the seed node; ``max_connections`` then applies per
    node. It follows MOVED/ASK redirections and refreshes its slot map after a failover by itself. It answers
    the commands this package sends with the same types as the standalone client, hence the cast; the few
    places that differ (sharded Pub/Sub) ask ``is_cluster``.

    ``client_name``: what each connection calls itself (CLIENT SETNAME as it connects, no extra round trip
    after that), so that ``CLIENT LIST`` tells whose connection is whose; ``connection_name`` builds one."""
    if cluster:
        return cast(Redis, RedisCluster.from_url(
            url, max_connections=max_connections, decode_responses=True, socket_connect_timeout=5,
            socket_timeout=15, health_check_interval=10, client_name=client_name,
        ))
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait_timeout_s,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=15,
        health_check_interval=10,
        client_name=client_name,
    )
    return aioredis.Redis.from_pool(pool)


def connection_name(role: str, node_id: str) -> str:
    """The name a process's Redis connections (and PostgreSQL sessions) carry: ``notiflow:<role>:<node_id>``.
    Redis refuses a name with a space, a newline or another character outside ``!``..``~``: any such character
    of a configured node id becomes ``_``."""
    return re.sub(r"[^!-~]", "_", f"notiflow:{role}:{node_id}")


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


async def close_redis(redis: Redis, timeout_s: float) -> None:
    """Close ``redis``'s connections within ``timeout_s``; past it they are left to the process's exit (each
    disconnect may otherwise wait ``socket_connect_timeout`` for a peer that does not answer)."""
    try:
        await asyncio.wait_for(redis.aclose(), timeout=timeout_s)
    except (TimeoutError, RedisError, OSError) as exc:
        log.warning("redis connections not closed in time", extra={"timeout_s": timeout_s, "error": repr(exc)})


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
        metrics.REDIS_ERRORS.labels(what).inc()
        raise StoreUnavailable(f"redis: {what}: {type(exc).__name__}: {exc}") from exc
    except (ClusterDownError, TryAgainError, MasterDownError) as exc:
        # A cluster's slot without a master (a failover under way): its keys answer again once one is promoted.
        metrics.REDIS_ERRORS.labels(what).inc()
        raise StoreUnavailable(f"redis: {what}: {type(exc).__name__}: {exc}") from exc
    except ResponseError as exc:
        if str(exc).startswith(("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN")):
            metrics.REDIS_ERRORS.labels(what).inc()
            raise StoreUnavailable(f"redis: {what}: {exc}") from exc
        raise
    except RedisError as exc:
        metrics.REDIS_ERRORS.labels(what).inc()
        raise StoreUnavailable(f"redis: {what}: {type(exc).__name__}: {exc}") from exc
