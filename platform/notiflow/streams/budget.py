"""Per-host retry budget: how many webhook retries each downstream host may receive per second, counted
across every worker in one Redis counter per host and second (a fixed window)."""

from __future__ import annotations

import time

from notiflow.config import Settings
from notiflow.streams.client import Redis, redis_errors


class HostBudget:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._r = redis
        self._s = settings

    async def take(self, wanted: dict[str, int], per_second: int, now_s: float | None = None) -> dict[str, int]:
        """Reserve up to ``wanted[host]`` calls for each host in the current second; returns how many
        each host was granted. One pipeline for all hosts."""
        if not wanted:
            return {}
        second = int(time.time() if now_s is None else now_s)
        hosts = list(wanted)
        async with redis_errors("retry budget"):
            pipe = self._r.pipeline(transaction=False)
            for host in hosts:
                key = self._s.key("budget", host, str(second))
                pipe.incrby(key, wanted[host])
                pipe.expire(key, 5)
            replies = await pipe.execute()
        granted: dict[str, int] = {}
        for i, host in enumerate(hosts):
            used_after = int(replies[2 * i])
            used_before = used_after - wanted[host]
            granted[host] = max(0, min(wanted[host], per_second - used_before))
        return granted
