"""Presence: which gateway nodes hold live sockets of a user.

``presence:{user}`` is a hash node -> open socket count; ``node:{node}:alive`` is a key with a TTL that
the node's heartbeat refreshes. A node killed with SIGKILL stops refreshing, its key expires within
``presence_ttl_s``, and from then on its entries are ignored (and pruned when next looked up).
"""

from __future__ import annotations

from notiflow.config import Settings
from notiflow.streams.client import Redis, redis_errors

# Live nodes of each user in KEYS; prunes entries of dead nodes on the way.
_LOOKUP = """
local out = {}
for i, key in ipairs(KEYS) do
    local live = {}
    for _, node in ipairs(redis.call('HKEYS', key)) do
        if redis.call('EXISTS', ARGV[1] .. node .. ARGV[2]) == 1 then
            live[#live + 1] = node
        else
            redis.call('HDEL', key, node)
        end
    end
    out[i] = live
end
return out
"""

# Count this node's new socket; return the user's sockets on live nodes (this one included).
_CONNECT = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local total = 0
local kv = redis.call('HGETALL', KEYS[1])
for i = 1, #kv, 2 do
    if kv[i] == ARGV[1] or redis.call('EXISTS', ARGV[2] .. kv[i] .. ARGV[3]) == 1 then
        total = total + tonumber(kv[i + 1])
    end
end
return total
"""

# A user's open sockets on live nodes (the nodes _LOOKUP would route to); reads only, prunes nothing.
_COUNT = """
local total = 0
local kv = redis.call('HGETALL', KEYS[1])
for i = 1, #kv, 2 do
    if redis.call('EXISTS', ARGV[1] .. kv[i] .. ARGV[2]) == 1 then
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


class Presence:
    """Presence commands for one node (gateway side) or for lookups (worker side)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._r = redis
        self._s = settings
        self.ttl_ms = max(1, int(settings.presence_ttl_s * 1000))
        self._lookup = redis.register_script(_LOOKUP)
        self._release = redis.register_script(_RELEASE)
        self._connect = redis.register_script(_CONNECT)
        self._count = redis.register_script(_COUNT)

    def _user_key(self, user_id: str) -> str:
        return self._s.key("presence", user_id)

    def _alive_key(self, node_id: str) -> str:
        return self._s.key("node", node_id, "alive")

    async def connect(self, node_id: str, user_id: str) -> int:
        """Count one more socket of ``user_id`` on ``node_id``; the user's open sockets on live nodes."""
        async with redis_errors("presence connect"):
            total = await self._connect(
                keys=[self._user_key(user_id)], args=[node_id, self._s.key("node", ""), ":alive"]
            )
        return int(total)

    async def disconnect(self, node_id: str, user_id: str) -> None:
        async with redis_errors("presence disconnect"):
            await self._release(keys=[self._user_key(user_id)], args=[node_id])

    async def heartbeat(self, node_id: str, counts: dict[str, int]) -> bool:
        """Refresh this node's liveness. When the key had vanished (expired during a stall, or Redis
        lost its data) re-assert every local user's presence; returns True in that case."""
        async with redis_errors("presence heartbeat"):
            if await self._r.pexpire(self._alive_key(node_id), self.ttl_ms):
                return False
            pipe = self._r.pipeline(transaction=False)
            pipe.set(self._alive_key(node_id), "1", px=self.ttl_ms)
            for user_id, n in counts.items():
                pipe.hset(self._user_key(user_id), node_id, n)
            await pipe.execute()
            return True

    async def leave(self, node_id: str, user_ids: list[str]) -> None:
        """A clean shutdown: stop counting as alive at once rather than after the TTL."""
        async with redis_errors("presence leave"):
            pipe = self._r.pipeline(transaction=False)
            pipe.delete(self._alive_key(node_id))
            for user_id in user_ids:
                pipe.hdel(self._user_key(user_id), node_id)
            await pipe.execute()

    async def live_nodes(self, user_ids: list[str]) -> dict[str, list[str]]:
        """For each user, the live nodes holding a socket of theirs; one round trip for the batch."""
        if not user_ids:
            return {}
        async with redis_errors("presence lookup"):
            rows = await self._lookup(
                keys=[self._user_key(u) for u in user_ids], args=[self._s.key("node", ""), ":alive"]
            )
        return {u: [str(n) for n in nodes] for u, nodes in zip(user_ids, rows, strict=True)}

    async def live_sockets(self, user_id: str) -> int:
        """The user's open sockets on live nodes: what routing sees (a dead node's count is ignored)."""
        async with redis_errors("presence count"):
            total = await self._count(keys=[self._user_key(user_id)], args=[self._s.key("node", ""), ":alive"])
        return int(total)
