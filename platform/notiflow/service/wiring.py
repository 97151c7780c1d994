"""Wiring: the stores a process opens, and the gateway's services built on them. The gateway reaches the
Redis and PostgreSQL adapters only through this module and the services; the workers are wired in
worker/factory.py, on the same ``open_stores``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from notiflow import roles
from notiflow.config import Settings
from notiflow.lifecycle import RELEASE_S, Deadline
from notiflow.roles import GatewaySettings
from notiflow.service.auth import AuthService, KeyService
from notiflow.service.dashboard import DashboardService
from notiflow.service.dispatch_log import DispatchLog
from notiflow.service.ingest import IngestService
from notiflow.service.ports import Record, Wrappers
from notiflow.service.queries import QueryService
from notiflow.service.ratelimit import IngestLimiter
from notiflow.service.sessions import LocalSockets, SessionService
from notiflow.service.telemetry import Sockets, Telemetry
from notiflow.service.topics import TopicService
from notiflow.store.pool import Pool, close_pool, connect_pool, pg_limits
from notiflow.streams.client import Redis, close_redis, connect_redis, connection_name
from notiflow.streams.presence import Presence
from notiflow.streams.pubsub import Router
from notiflow.streams.ratelimit import TokenBuckets
from notiflow.streams.stats import StatsBoard
from notiflow.streams.work import WorkStream


@asynccontextmanager
async def open_stores(settings: Settings, *, pg_max: int, role: str) -> AsyncIterator[tuple[Pool, Redis]]:
    """PostgreSQL's pool (``pg_max`` connections) and the Redis client; closed afterwards, Redis first, each
    within ``RELEASE_S``: a connection never given back is cut. Every connection carries the name
    ``notiflow:<role>:<node id>`` (Redis ``CLIENT LIST``, PostgreSQL ``pg_stat_activity.application_name``)."""
    name = connection_name(role, settings.node_id)
    pool = await connect_pool(
        settings.database_url_required, max_size=pg_max, application_name=name, **pg_limits(settings)
    )
    redis = connect_redis(
        settings.redis_url_required, max_connections=settings.redis_pool_max,
        wait_timeout_s=settings.redis_pool_timeout_s, cluster=settings.redis_cluster, client_name=name,
    )
    try:
        yield pool, redis
    finally:
        await close_redis(redis, RELEASE_S)
        await close_pool(pool, RELEASE_S)


class GatewaySockets(LocalSockets, Sockets, Protocol):
    """What the gateway's services need of its registry of local sockets (gateway/hub.py)."""


@dataclass(slots=True, kw_only=True)
class GatewayServices:
    """The services of one gateway process, on its stores (``pool``: the wrapped record; ``redis``: for the
    readiness check)."""

    settings: GatewaySettings
    pool: Record
    redis: Redis
    ingest: IngestService
    queries: QueryService
    sessions: SessionService
    limiter: IngestLimiter
    telemetry: Telemetry
    dashboard: DashboardService
    auth: AuthService
    keys: KeyService
    topics: TopicService

    async def start(self) -> None:
        self.queries.start()
        self.topics.start()
        self.limiter.start()
        await self.ingest.start()
        await self.sessions.start()
        self.telemetry.start()

    async def close(self, deadline: Deadline) -> None:
        """Drain every service within ``deadline``: the durable drains first (commits, then acks); telemetry's
        last round only if time is left."""
        await self.ingest.close(deadline.left())
        await self.limiter.close(deadline.left())
        await self.queries.close(deadline.left())
        await self.topics.close(deadline.left())
        await self.telemetry.close(deadline.left())
        await self.sessions.close(deadline.left())
        await self.auth.close(deadline.left())


@asynccontextmanager
async def gateway_services(
    settings: Settings, wrap: Wrappers, sockets: GatewaySockets
) -> AsyncIterator[GatewayServices]:
    """Open the stores and build the gateway's services on them (not started: ``GatewayServices.start``),
    the adapters wrapped by ``wrap``; the stores are closed on the way out. Raises ``AuthNotConfigured``
    (the stores closed) when authentication is on and no key is configured."""
    gateway = roles.gateway(settings)  # what the gateway's services get: their own part of the settings
    async with open_stores(settings, pg_max=settings.pg_pool_max, role="gateway") as (pool, redis):
        record = wrap.record(pool)
        work = wrap.work(WorkStream(redis, settings))
        handoffs = DispatchLog(record, gateway.dispatch_record_delay_ms / 1000)
        queries = QueryService(settings=gateway, pool=record, work=work, handoffs=handoffs)
        ingest = IngestService(settings=gateway, pool=record, work=work)
        sessions = SessionService(
            settings=gateway, redis=redis, channel=Router(redis, settings).channel(settings.node_id),
            presence=wrap.presence(Presence(redis, settings)), queries=queries, sockets=sockets, handoffs=handoffs,
        )
        auth = AuthService(roles.auth(settings), record)
        await auth.start()
        telemetry = Telemetry(settings=gateway, work=work, pool=record, board=StatsBoard(redis, settings),
                              role="gateway", read_stores=True, sockets=sockets)
        yield GatewayServices(
            settings=gateway, pool=record, redis=redis, ingest=ingest, queries=queries, sessions=sessions,
            limiter=IngestLimiter(gateway, wrap.buckets(TokenBuckets(redis, settings))), telemetry=telemetry,
            dashboard=DashboardService(telemetry, queries), auth=auth, keys=KeyService(record),
            topics=TopicService(pool=record),
        )
