"""The stats board: each process publishes its figures to Redis, the dashboard reads them all.

``{prefix}:stats:node:{node_id}`` holds one node's figures as JSON with a TTL (a node that stops
publishing drops off by itself); ``{prefix}:stats:nodes`` is a ZSET of node ids scored by the time they
last published, so that a reader finds them without SCAN; ``{prefix}:stats:errors`` is a capped list of
the most recent errors any process logged.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from notiflow.config import Settings
from notiflow.streams.client import Redis, redis_errors

ERRORS_KEPT = 50


class StatsBoard:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._r = redis
        # Partitioned (a cluster): the board in one slot, read with one MGET.
        stats = "{stats}" if settings.partitioned else "stats"
        self._nodes = settings.key(stats, "nodes")
        self._errors = settings.key(stats, "errors")
        self._prefix = settings.key(stats, "node")
        self.ttl_s = max(5, round(5 * settings.stats_interval_s))

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}:{node_id}"

    async def publish(self, node_id: str, figures: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        """One pipeline: this node's figures, its entry in the node index, its new errors."""
        now_ms = int(time.time() * 1000)
        async with redis_errors("stats publish"):
            pipe = self._r.pipeline(transaction=False)
            pipe.set(self._node_key(node_id), orjson.dumps(figures), ex=self.ttl_s)
            pipe.zadd(self._nodes, {node_id: now_ms})
            pipe.zremrangebyscore(self._nodes, "-inf", now_ms - self.ttl_s * 1000)
            if errors:
                pipe.lpush(self._errors, *(orjson.dumps(e) for e in errors))
                pipe.ltrim(self._errors, 0, ERRORS_KEPT - 1)
            await pipe.execute()

    async def nodes(self) -> list[dict[str, Any]]:
        """The figures of every node that published within the TTL."""
        since_ms = int(time.time() * 1000) - self.ttl_s * 1000
        async with redis_errors("stats nodes"):
            ids = await self._r.zrangebyscore(self._nodes, since_ms, "+inf")
            if not ids:
                return []
            raw = await self._r.mget([self._node_key(str(i)) for i in ids])
        return [orjson.loads(r) for r in raw if r]

    async def errors(self, limit: int) -> list[dict[str, Any]]:
        async with redis_errors("stats errors"):
            raw = await self._r.lrange(self._errors, 0, limit - 1)
        return [orjson.loads(r) for r in raw]
