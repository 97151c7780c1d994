"""Token buckets in Redis: how many deliveries each client identity may submit, across every gateway.

One hash per identity (``tokens``, ``at_ms``), refilled continuously at ``rate`` per second up to
``burst``, read and updated by one Lua script for a whole batch of requests, on Redis's own clock so
that gateways with skewed clocks share one bucket fairly.
"""

from __future__ import annotations

import hashlib

from notiflow.config import Settings
from notiflow.streams.client import Redis, redis_errors

# KEYS: one bucket per request (repeats allowed: taken in order). ARGV: rate per ms, burst, then costs.
# Returns, per request, 0 when admitted or the milliseconds until its cost would be available (a cost over the
# burst never is: the caller refuses it before asking).
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = math.ceil(burst / rate) + 1000
local out = {}
for i, key in ipairs(KEYS) do
    local cost = tonumber(ARGV[2 + i])
    local b = redis.call('HMGET', key, 'tokens', 'at_ms')
    local tokens, at = tonumber(b[1]), tonumber(b[2])
    if tokens == nil or at == nil then
        tokens, at = burst, now
    elseif now > at then
        tokens, at = math.min(burst, tokens + (now - at) * rate), now
    end
    if tokens >= cost then
        tokens = tokens - cost
        out[i] = 0
    else
        out[i] = math.max(1, math.ceil((cost - tokens) / rate))
    end
    redis.call('HSET', key, 'tokens', tostring(tokens), 'at_ms', tostring(at))
    redis.call('PEXPIRE', key, ttl)
end
return out
"""


class TokenBuckets:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._s = settings
        self._take = redis.register_script(_TAKE)

    def _key(self, identity: str) -> str:
        # Identities are opaque (a key's hash today); hashed again so that any string makes a short key.
        # Partitioned (a cluster): every bucket in one slot, so that one script call takes a whole batch.
        tag = ("{ratelimit}",) if self._s.partitioned else ("ratelimit",)
        return self._s.key(*tag, hashlib.sha256(identity.encode()).hexdigest()[:32])

    async def take(self, requests: list[tuple[str, int]], rate_per_s: float, burst: int) -> list[int]:
        """For each (identity, cost), in order: 0 when admitted (its tokens are taken), else the
        milliseconds until it would be. One round trip for the batch."""
        if not requests:
            return []
        async with redis_errors("rate limit"):
            waits = await self._take(
                keys=[self._key(identity) for identity, _ in requests],
                args=[rate_per_s / 1000.0, burst, *(cost for _, cost in requests)],
            )
        return [int(w) for w in waits]
