"""The telemetry task publishes each node's figures and the errors it logged, also while PostgreSQL is
down; the dashboard sums counters once per process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from notiflow.config import Settings
from notiflow.service.dashboard import aggregate
from notiflow.service.telemetry import Telemetry
from notiflow.store.pool import connect_pool
from notiflow.streams.stats import StatsBoard
from notiflow.streams.work import WorkStream

pytestmark = pytest.mark.timeout(60)


class DownPool:
    """A fault wrapper: every acquire fails as PostgreSQL being unreachable does."""

    @asynccontextmanager
    async def acquire(self, **_: Any) -> AsyncIterator[Any]:
        raise ConnectionRefusedError("postgresql is down (injected)")
        yield  # pragma: no cover


class Sockets:
    def sockets(self) -> int:
        return 3

    def users(self) -> list[str]:
        return ["a", "b"]


async def test_figures_and_errors_reach_the_board_also_with_postgresql_down(settings: Settings) -> None:
    redis = aioredis.from_url(settings.redis_url_required, decode_responses=True)
    pool = await connect_pool(settings.database_url_required, max_size=1)
    try:
        work = WorkStream(redis, settings)
        board = StatsBoard(redis, settings)
        up = Telemetry(settings=settings, work=work, pool=pool, board=board, role="gateway", read_stores=True,
                       sockets=Sockets())
        await up.tick()
        assert up.store["dlq_entries"] == 0 and up.store["stream_length"] == 0

        node = settings.model_copy(update={"node_id": "gw-down"})
        down = Telemetry(settings=node, work=work, pool=DownPool(), board=board, role="gateway", read_stores=True,  # type: ignore[arg-type]
                         sockets=Sockets())
        logging.getLogger("notiflow.test").warning("something failed", extra={"error": "boom (injected)"})
        await down.tick()
        nodes = {n["node"]: n for n in await board.nodes()}
        assert set(nodes) == {settings.node_id, "gw-down"}
        assert nodes["gw-down"]["sockets"] == 3 and nodes["gw-down"]["users"] == 2
        assert nodes["gw-down"]["pg_errors"] >= 1  # the failed DLQ count was counted
        errors = await board.errors(10)
        assert any(e["msg"] == "something failed" and e["error"] == "boom (injected)" for e in errors)
    finally:
        await pool.close()
        await redis.aclose()


def test_counters_are_summed_once_per_process() -> None:
    base = {"accepted": 5, "frames_sent": 4, "latency_buckets": [[0.1, 2], ["+Inf", 4]], "at": 0}
    nodes = [
        {**base, "node": "gw0", "role": "gateway", "process": "host-1", "sockets": 2, "users": 1},
        {**base, "node": "gw1", "role": "gateway", "process": "host-1", "sockets": 1, "users": 1},
        {**base, "node": "sw0", "role": "stream-worker", "process": "host-2", "accepted": 0},
    ]
    out = aggregate(nodes)
    assert out["totals"]["accepted"] == 5 and out["totals"]["frames_sent"] == 8
    assert out["latency_buckets"] == [[0.1, 4.0], ["+Inf", 8.0]]
    assert [(g["node"], g["sockets"]) for g in out["gateways"]] == [("gw0", 2), ("gw1", 1)]
    assert out["roles"] == {"gateway": 2, "stream-worker": 1}
