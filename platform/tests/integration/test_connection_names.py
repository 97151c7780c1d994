"""Every connection a process opens says whose it is: ``notiflow:<role>:<node id>`` in Redis's CLIENT LIST and
in PostgreSQL's pg_stat_activity, so that an operator (and test_resync_gap, which cuts one gateway's Pub/Sub
connection by it) can tell them apart."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis
from helpers import wait_for
from integration_support import Gateways, Workers

from notiflow.streams.client import connection_name

pytestmark = pytest.mark.timeout(60)


def test_a_name_keeps_only_what_redis_accepts() -> None:
    assert connection_name("gateway", "web-1") == "notiflow:gateway:web-1"
    assert connection_name("stream-worker", "rack 2\né") == "notiflow:stream-worker:rack_2__"


async def test_gateways_and_workers_name_their_redis_and_postgresql_connections(
    gateways: Gateways, workers: Workers, rds: aioredis.Redis, db: asyncpg.Pool
) -> None:
    node = await gateways.start()
    worker = await workers.stream()
    names = {connection_name("gateway", node.node_id), connection_name("stream-worker", worker.node_id)}

    async def redis_names() -> bool:  # a worker's first Redis connection opens with its first read
        return names <= {c["name"] for c in await rds.client_list()}

    await wait_for(redis_names, message="both processes' connections in CLIENT LIST")
    pubsub_names = {c["name"] for c in await rds.client_list(_type="pubsub")}
    pg_names = {r["application_name"] for r in await db.fetch("SELECT application_name FROM pg_stat_activity")}

    assert connection_name("gateway", node.node_id) in pubsub_names, pubsub_names
    assert names <= pg_names, pg_names
