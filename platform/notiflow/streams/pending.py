"""The work streams' pending entries: those delivered to a consumer of the group (streams/keys.py ``GROUP``)
and not yet acknowledged. What the stream workers' reclaim (worker/reclaim.py) sees and takes over, and what
a worker keeps claimed while it still works on it. The work log (streams/work.py) hands these commands out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from notiflow.streams.client import Redis, is_nogroup, redis_errors
from notiflow.streams.keys import GROUP, Keyspace, bare, by_partition, each
from notiflow.streams.work_scripts import RAW
from notiflow.streams.work_scripts import fields as _fields
from notiflow.streams.work_scripts import text as _text


@dataclass(slots=True, frozen=True)
class Pending:
    """A stream entry delivered to a consumer but not acknowledged."""

    entry_id: str
    consumer: str
    idle_ms: int
    deliveries: int


class PendingEntries:
    """XPENDING and XCLAIM on every partition's stream; entry ids qualified as ``Keyspace.qualify`` makes them."""

    def __init__(self, redis: Redis, keys: Keyspace) -> None:
        self._r = redis
        self.keys = keys

    async def idle(self, min_idle_ms: int, count: int) -> list[Pending]:
        """Entries that some consumer has held unacknowledged for at least ``min_idle_ms``, up to ``count``
        per partition."""
        async with redis_errors("xpending"):
            rows = await each(self._idle(p, min_idle_ms, count) for p in self.keys.partitions)
        return [r for part in rows for r in part]

    async def _idle(self, p: int, min_idle_ms: int, count: int) -> list[Pending]:
        try:
            rows = await self._r.xpending_range(
                self.keys.stream(p), GROUP, min="-", max="+", count=count, idle=min_idle_ms
            )
        except Exception as exc:
            if is_nogroup(exc):
                return []
            raise
        return [
            Pending(self.keys.qualify(p, str(r["message_id"])), str(r["consumer"]), int(r["time_since_delivered"]),
                    int(r["times_delivered"]))
            for r in rows
        ]

    async def claim(
        self, consumer: str, min_idle_ms: int, entry_ids: list[str]
    ) -> list[tuple[str, dict[str, str] | None]]:
        """Take over idle entries; an entry deleted meanwhile comes back with ``None`` fields."""
        if not entry_ids:
            return []
        parts = by_partition(entry_ids)
        async with redis_errors("xclaim"):
            replies: list[Any] = await each(
                self._r.execute_command(  # type: ignore[no-untyped-call]
                    "XCLAIM", self.keys.stream(p), GROUP, consumer, str(min_idle_ms),
                    *(bare(entry_ids[i]) for i in at), **RAW,
                )
                for p, at in parts.items()
            )
        got: dict[str, dict[str, str] | None] = {
            self.keys.qualify(p, _text(i)): _fields(f) for p, rows in zip(parts, replies, strict=True)
            for i, f in rows if i is not None
        }
        return [(i, got.get(i)) for i in entry_ids]

    async def keep(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of entries this consumer still works on (XCLAIM JUSTID, which leaves their
        delivery counters alone), so that no other consumer reclaims them while a store is away: an entry
        held through an outage was never the cause of a crash, and must not count towards poison."""
        if not entry_ids:
            return
        async with redis_errors("xclaim justid"):
            await each(
                self._r.execute_command(  # type: ignore[no-untyped-call]
                    "XCLAIM", self.keys.stream(p), GROUP, consumer, "0",
                    *(bare(entry_ids[i]) for i in at), "JUSTID",
                )
                for p, at in by_partition(entry_ids).items()
            )
