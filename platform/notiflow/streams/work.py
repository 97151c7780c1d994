"""The work log: the notifications stream with its consumer group, and the retry schedule ZSET."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from redis.client import NEVER_DECODE

from notiflow.config import Settings
from notiflow.models import Channel, StreamEntry
from notiflow.streams import bundle
from notiflow.streams.client import Redis, is_nogroup, redis_errors

GROUP = "notiflow-workers"

# Takes the due members, re-adds each to the stream and removes it from the ZSET, all in one atomic
# script: two retry workers never move the same member, and a crash mid-move leaves each member in
# exactly one of the two places.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
    local e = cjson.decode(member)
    redis.call('XADD', KEYS[2], '*', 'n', e.n, 'u', e.u, 'c', e.c)
    redis.call('ZREM', KEYS[1], member)
end
if #due > 0 then redis.call('INCRBY', KEYS[3], #due) end
return #due
"""

# Many XADDs in one call: ARGV[1] is the backlog units they add (KEYS[2]), then per entry its number of
# field/value arguments and those. One command out and one reply back: a pipeline of 2,000 XADDs cost the
# client 11.6 us per entry, most of it reading 2,000 replies through redis-py; here redis-py's Script packs
# the arguments (with hiredis when installed) and parses one reply.
_XADD_MANY = """
redis.call('INCRBY', KEYS[2], ARGV[1])
local out = {}
local i = 2
local n = #ARGV
while i <= n do
    local k = tonumber(ARGV[i])
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + k))
    i = i + k + 1
end
return out
"""

# XACK (group ARGV[1]) and XDEL of entries given as (id, units) pairs in the rest of ARGV; the units of each
# entry this call deleted come off the backlog (KEYS[2]), never below zero: an entry acknowledged twice (or
# deleted meanwhile) counts once.
_ACK = """
local gone = 0
for i = 2, #ARGV, 2 do
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then gone = gone + tonumber(ARGV[i + 1]) end
end
if gone > 0 and redis.call('DECRBY', KEYS[2], gone) < 0 then redis.call('SET', KEYS[2], 0) end
return gone
"""


# Stream entries are read undecoded and decoded here, entry by entry: one entry whose bytes are not UTF-8
# must not fail the whole read (it would fail every read, and kill the worker each time). Its text gets
# replacement characters, it fails parsing, and it is parked like any other malformed entry.
_RAW: dict[str, Any] = {NEVER_DECODE: []}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def _fields(raw: Any) -> dict[str, str] | None:
    return None if raw is None else {_text(k): _text(v) for k, v in dict(raw).items()}


@dataclass(slots=True, frozen=True)
class Pending:
    """A stream entry delivered to a consumer but not acknowledged."""

    entry_id: str
    consumer: str
    idle_ms: int
    deliveries: int


def retry_member(nid: uuid.UUID, user_id: str, channel: Channel) -> str:
    """The ZSET member of one delivery's retry: unique per delivery and channel, so rescheduling
    the same retry moves it rather than duplicating it."""
    return orjson.dumps({"n": str(nid), "u": user_id, "c": channel.value}).decode()


class WorkStream:
    """Commands on the notifications stream and the retry ZSET."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._r = redis
        self.stream = settings.stream_key
        self.retry_key = settings.key("retry")
        self.epoch_key = settings.key("epoch")
        #: The backlog in units: each entry counts as the notifications (or fan-out chunks) it names, so that
        #: a bundle of 100 counts 100 against STREAM_MAX_BACKLOG, as the same work unbundled did.
        self.units_key = settings.key("stream-units")
        self._move_due = redis.register_script(_MOVE_DUE)
        self._ack = redis.register_script(_ACK)
        # redis-py's Script: EVALSHA, and on NOSCRIPT (a Redis restarted or flushed of scripts since) it loads
        # the script and calls again.
        self._xadd_many = redis.register_script(_XADD_MANY)

    async def add(self, entries: list[StreamEntry]) -> list[str]:
        """XADD every entry in one script call (one command, one reply), fresh socket entries in bundles
        (streams/bundle.py); returns the ids of the stream entries written."""
        if not entries:
            return []
        args: list[str] = [str(len(entries))]
        for packed_fields in bundle.pack(entries):
            fields = [x for kv in packed_fields.items() for x in kv]
            args.append(str(len(fields)))
            args += fields
        async with redis_errors("xadd"):
            ids = await self._xadd_many(keys=[self.stream, self.units_key], args=args)
        return [_text(i) for i in ids]

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; a no-op when both exist."""
        async with redis_errors("xgroup create"):
            try:
                await self._r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
            except Exception as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            # A stream from before the units were kept: its entries count one each (unless something was
            # added since, which created the count: those older entries then count nothing).
            await self._r.set(self.units_key, await self._r.xlen(self.stream), nx=True)

    async def read(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """New entries for this consumer; recreates the group if Redis lost it."""
        async with redis_errors("xreadgroup"):
            try:
                resp: Any = await self._r.execute_command(  # type: ignore[no-untyped-call]
                    "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, "BLOCK", block_ms,
                    "STREAMS", self.stream, ">", **_RAW,
                )
            except Exception as exc:
                if not is_nogroup(exc):
                    raise
                await self.ensure_group()
                return []
        out: list[tuple[str, dict[str, str]]] = []
        for _stream, entries in resp or []:
            out.extend((_text(i), _fields(f) or {}) for i, f in entries)
        return out

    async def ack(self, entry_ids: list[str], units: list[int] | None = None) -> None:
        """XACK and XDEL in one script call: the stream then holds only unfinished work, so its length is the
        backlog; ``units`` (one each by default) are what each entry counted towards the backlog units."""
        if not entry_ids:
            return
        counts = units if units is not None else [1] * len(entry_ids)
        args = [GROUP, *(x for pair in zip(entry_ids, map(str, counts), strict=True) for x in pair)]
        async with redis_errors("xack"):
            await self._ack(keys=[self.stream, self.units_key], args=args)

    async def idle(self, min_idle_ms: int, count: int) -> list[Pending]:
        """Entries that some consumer has held unacknowledged for at least ``min_idle_ms``."""
        async with redis_errors("xpending"):
            try:
                rows = await self._r.xpending_range(
                    self.stream, GROUP, min="-", max="+", count=count, idle=min_idle_ms
                )
            except Exception as exc:
                if is_nogroup(exc):
                    return []
                raise
        return [
            Pending(str(r["message_id"]), str(r["consumer"]), int(r["time_since_delivered"]),
                    int(r["times_delivered"]))
            for r in rows
        ]

    async def claim(
        self, consumer: str, min_idle_ms: int, entry_ids: list[str]
    ) -> list[tuple[str, dict[str, str] | None]]:
        """Take over idle entries; an entry deleted meanwhile comes back with ``None`` fields."""
        if not entry_ids:
            return []
        async with redis_errors("xclaim"):
            rows: Any = await self._r.execute_command(  # type: ignore[no-untyped-call]
                "XCLAIM", self.stream, GROUP, consumer, str(min_idle_ms), *entry_ids, **_RAW
            )
        got: dict[str, dict[str, str] | None] = {_text(i): _fields(f) for i, f in rows if i is not None}
        return [(i, got.get(i)) for i in entry_ids]

    async def keep(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of entries this consumer still works on (XCLAIM JUSTID, which leaves their
        delivery counters alone), so that no other consumer reclaims them while a store is away: an entry
        held through an outage was never the cause of a crash, and must not count towards poison."""
        if not entry_ids:
            return
        async with redis_errors("xclaim justid"):
            await self._r.execute_command(  # type: ignore[no-untyped-call]
                "XCLAIM", self.stream, GROUP, consumer, "0", *entry_ids, "JUSTID"
            )

    async def backlog(self) -> int:
        """The backlog units (see ``units_key``): what ingestion's bound is compared with."""
        async with redis_errors("backlog units"):
            return int(await self._r.get(self.units_key) or 0)

    # --- the retry schedule -----------------------------------------------------------------

    async def schedule(self, items: list[tuple[str, int]]) -> None:
        """ZADD (member, due time in ms) pairs in one command."""
        if not items:
            return
        async with redis_errors("zadd"):
            await self._r.zadd(self.retry_key, {m: due for m, due in items})

    async def move_due(self, limit: int, now_ms: int | None = None) -> int:
        """Move up to ``limit`` due retries back into the stream; returns how many moved."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        async with redis_errors("move due retries"):
            return int(await self._move_due(keys=[self.retry_key, self.stream, self.units_key], args=[now, limit]))

    async def scheduled(self) -> int:
        async with redis_errors("zcard"):
            return int(await self._r.zcard(self.retry_key))

    # --- the epoch: tells whether Redis lost its data ------------------------------------------

    async def claim_epoch(self) -> bool:
        """True when the epoch key was missing and this call created it: Redis is new or lost its data,
        and the caller must rebuild the stream and the schedule from PostgreSQL."""
        async with redis_errors("epoch"):
            return bool(await self._r.set(self.epoch_key, uuid.uuid4().hex, nx=True))

    async def figures(self) -> dict[str, int]:
        """Stream length, the group's pending entries and lag, and the retry schedule's depth: one round trip."""
        async with redis_errors("stream figures"):
            pipe = self._r.pipeline(transaction=False)
            pipe.xlen(self.stream)
            pipe.zcard(self.retry_key)
            pipe.xinfo_groups(self.stream)
            length, scheduled, groups = await pipe.execute(raise_on_error=False)
        for value in (length, scheduled):
            if isinstance(value, Exception):
                raise value
        # No stream yet (nothing accepted since Redis started): no group, nothing pending.
        group: dict[str, Any] = {}
        if isinstance(groups, list):
            group = next((g for g in groups if g.get("name") == GROUP), {})
        lag, pending = group.get("lag"), int(group.get("pending") or 0)
        return {
            "stream_length": int(length),
            "stream_pending": pending,
            # Redis reports no lag when it cannot tell (after XDELs); the stream holds only unfinished work,
            # so what is in it and not pending is what the group has not read yet.
            "group_lag": int(lag) if lag is not None else max(0, int(length) - pending),
            "retry_scheduled": int(scheduled),
        }

    async def info(self) -> dict[str, Any]:
        async with redis_errors("info"):
            pipe = self._r.pipeline(transaction=False)
            pipe.xlen(self.stream)
            pipe.zcard(self.retry_key)
            length, scheduled = await pipe.execute()
        return {"stream_length": int(length), "retry_scheduled": int(scheduled)}
