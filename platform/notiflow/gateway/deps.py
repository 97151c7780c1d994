"""What the routes reach: one container of services, built by the lifespan and kept on app.state."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from notiflow import ids
from notiflow.gateway.hub import Hub
from notiflow.service.wiring import GatewayServices


@dataclass(slots=True, kw_only=True)
class Services(GatewayServices):
    """The gateway's services (service/wiring.py) and its hub of local sockets."""

    hub: Hub

    @classmethod
    def of(cls, services: GatewayServices, hub: Hub) -> Services:
        return cls(hub=hub, **{f.name: getattr(services, f.name) for f in dataclasses.fields(services)})

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
