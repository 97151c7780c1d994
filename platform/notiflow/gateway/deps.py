"""What the routes reach: one container of services, built by the lifespan and kept on app.state."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from notiflow import ids
from notiflow.gateway.hub import Hub
from notiflow.roles import GatewaySettings
from notiflow.service.auth import AuthService, KeyService
from notiflow.service.dashboard import DashboardService
from notiflow.service.ingest import IngestService
from notiflow.service.ports import Record
from notiflow.service.queries import QueryService
from notiflow.service.ratelimit import IngestLimiter
from notiflow.service.sessions import SessionService
from notiflow.service.telemetry import Telemetry
from notiflow.service.topics import TopicService
from notiflow.streams.client import Redis


@dataclass(slots=True, kw_only=True)
class Services:
    settings: GatewaySettings
    pool: Record
    redis: Redis
    ingest: IngestService
    queries: QueryService
    sessions: SessionService
    hub: Hub
    limiter: IngestLimiter
    telemetry: Telemetry
    dashboard: DashboardService
    auth: AuthService
    keys: KeyService
    topics: TopicService

    @staticmethod
    def new_id() -> uuid.UUID:
        return ids.new_id()

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
            checks["postgresql"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the health answer
            checks["postgresql"] = f"error: {type(exc).__name__}"
        try:
            await self.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"error: {type(exc).__name__}"
        return checks


def services(conn: HTTPConnection) -> Services:
    svc: Any = conn.app.state.services
    assert isinstance(svc, Services)
    return svc
