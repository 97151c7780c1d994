"""Presence: which gateway nodes hold live sockets of a user.

``presence:{user}`` is a hash node -> open socket count, in the user's partition (streams/keys.py). Each
partition also holds a ZSET of nodes scored by the time (Redis's clock, ms) until which each counts as
alive; every node's heartbeat refreshes its score in every partition, so that each script reads only keys
of one partition, all declared in KEYS (one Redis Cluster slot). A node killed with SIGKILL stops
refreshing, its score passes within ``presence_ttl_s``, and from then on its entries are ignored (and
pruned when next looked up). ``node:{node}:alive`` (a key with that TTL) is the node's own liveness.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from notiflow.config import Settings
from notiflow.streams.client import Redis, redis_errors
from notiflow.streams.keys import Keyspace

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1]: the partition's node ZSET; KEYS[2..]: users' presence hashes. Live nodes of each user; prunes
# entries of dead nodes on the way. Each node's liveness is read once per call (a fan-out names many users of
# few nodes: one ZSCORE per user was half of the script's commands).
_LOOKUP = _NOW + """
local out = {}
local alive = {}
for i = 2, #KEYS do
    local live = {}
    for _, node in ipairs(redis.call('HKEYS', KEYS[i])) do
        local ok = alive[node]
        if ok == nil then
            local until_ms = tonumber(redis.call('ZSCORE', KEYS[1], node))
            ok = until_ms ~= nil and until_ms > now
            alive[node] = ok
        end
        if ok then
            live[#live + 1] = node
        else
            redis.call('HDEL', KEYS[i], node)
        end
    end
    out[i - 1] = live
end
return out
"""

# KEYS[1]: the user's presence hash, KEYS[2]: the partition's node ZSET. Count this node's (ARGV[1]) new
# socket; return the user's sockets on live nodes (this one included).
_CONNECT = _NOW + """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local total = 0
local kv = redis.call('HGETALL', KEYS[1])
for i = 1, #kv, 2 do
    local until_ms = tonumber(redis.call('ZSCORE', KEYS[2], kv[i]))
    if kv[i] == ARGV[1] or (until_ms and until_ms > now) then
        total = total + tonumber(kv[i + 1])
    end
end
return total
"""

# KEYS[1]: the user's presence hash, KEYS[2]: the partition's node ZSET. The user's open sockets on live
# nodes (the nodes _LOOKUP would route to); reads only, prunes nothing.
_COUNT = _NOW + """
local total = 0
local kv = redis.call('HGETALL', KEYS[1])
for i = 1, #kv, 2 do
    local until_ms = tonumber(redis.call('ZSCORE', KEYS[2], kv[i]))
    if until_ms and until_ms > now then
        total = total + tonumber(kv[i + 1])
    end
end
return total
"""

_RELEASE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"""

# KEYS[1]: a partition's node ZSET. Refresh node ARGV[1] for ARGV[2] ms; forget nodes dead for an hour.
# Returns 1 when the node was not alive there (first beat, expired during a stall, or the partition's data
# was lost): its users of that partition must be asserted again.
_BEAT = _NOW + """
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)
if old and old > now then return 0 end
return 1
"""


class Presence:
    """Presence commands for one node (gateway side) or for lookups (worker side)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._r = redis
        self.keys = Keyspace(settings)
        self.ttl_ms = max(1, int(settings.presence_ttl_s * 1000))
        self._lookup = redis.register_script(_LOOKUP)
        self._release = redis.register_script(_RELEASE)
        self._connect = redis.register_script(_CONNECT)
        self._beat = redis.register_script(_BEAT)
        self._count = redis.register_script(_COUNT)

    async def connect(self, node_id: str, user_id: str) -> int:
        """Count one more socket of ``user_id`` on ``node_id``; the user's open sockets on live nodes."""
        keys = [self.keys.presence(user_id), self.keys.nodes(self.keys.of(user_id))]
        async with redis_errors("presence connect"):
            total = await self._connect(keys=keys, args=[node_id])
        return int(total)

    async def disconnect(self, node_id: str, user_id: str) -> None:
        async with redis_errors("presence disconnect"):
            await self._release(keys=[self.keys.presence(user_id)], args=[node_id])

    async def heartbeat(self, node_id: str, counts: dict[str, int]) -> bool:
        """Refresh this node's liveness in every partition. Where it was not alive any more (expired during a
        stall, or Redis lost that partition's data) re-assert the presence of the local users of that
        partition; returns True in that case."""
        ks = self.keys
        async with redis_errors("presence heartbeat"):
            beats = await asyncio.gather(
                self._r.set(ks.alive(node_id), "1", px=self.ttl_ms),
                *(self._beat(keys=[ks.nodes(p)], args=[node_id, self.ttl_ms]) for p in ks.partitions),
            )
            lost = {p for p, b in zip(ks.partitions, beats[1:], strict=True) if int(b)}
            if not lost:
                return False
            users = [(u, n) for u, n in counts.items() if ks.of(u) in lost]
            if users:
                pipe = self._r.pipeline(transaction=False)
                for user_id, n in users:
                    pipe.hset(ks.presence(user_id), node_id, n)
                await pipe.execute()
            return True

    async def leave(self, node_id: str, user_ids: list[str]) -> None:
        """A clean shutdown: stop counting as alive at once rather than after the TTL."""
        async with redis_errors("presence leave"):
            pipe = self._r.pipeline(transaction=False)
            pipe.delete(self.keys.alive(node_id))
            for p in self.keys.partitions:
                pipe.zrem(self.keys.nodes(p), node_id)
            for user_id in user_ids:
                pipe.hdel(self.keys.presence(user_id), node_id)
            await pipe.execute()

    async def live_nodes(self, user_ids: list[str]) -> dict[str, list[str]]:
        """For each user, the live nodes holding a socket of theirs; one script call per partition."""
        if not user_ids:
            return {}
        parts: dict[int, list[str]] = defaultdict(list)
        for u in user_ids:
            parts[self.keys.of(u)].append(u)
        async with redis_errors("presence lookup"):
            rows = await asyncio.gather(*(
                self._lookup(keys=[self.keys.nodes(p), *(self.keys.presence(u) for u in users)])
                for p, users in parts.items()
            ))
        return {
            u: [str(n) for n in nodes]
            for users, part_rows in zip(parts.values(), rows, strict=True)
            for u, nodes in zip(users, part_rows, strict=True)
        }

    async def live_sockets(self, user_id: str) -> int:
        """The user's open sockets on live nodes: what routing sees (a dead node's count is ignored)."""
        ks = self.keys
        async with redis_errors("presence count"):
            total = await self._count(keys=[ks.presence(user_id), ks.nodes(ks.of(user_id))])
        return int(total)
