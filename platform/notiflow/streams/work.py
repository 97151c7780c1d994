"""The work log: each partition's notifications stream with its consumer group, and its retry schedule ZSET."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any

import orjson

from notiflow.config import Settings
from notiflow.errors import PermanentError
from notiflow.models import Channel, StreamEntry
from notiflow.streams import bundle
from notiflow.streams.client import Redis, is_nogroup, redis_errors
from notiflow.streams.keys import GROUP, Keyspace, bare, by_partition, each, split_entries
from notiflow.streams.pending import Pending, PendingEntries
from notiflow.streams.work_scripts import ACK, MOVE_DUE, RAW, XADD_MANY
from notiflow.streams.work_scripts import fields as _fields
from notiflow.streams.work_scripts import text as _text


class PartitionsChanged(PermanentError):
    """NOTIFLOW_STREAM_PARTITIONS differs from the count recorded in Redis (docs/cluster.md: changing it)."""


def retry_member(nid: uuid.UUID, user_id: str, channel: Channel) -> str:
    """The ZSET member of one delivery's retry: unique per delivery and channel, so rescheduling
    the same retry moves it rather than duplicating it."""
    return orjson.dumps({"n": str(nid), "u": user_id, "c": channel.value}).decode()


class WorkStream:
    """Commands on the partitions' streams and retry ZSETs (streams/keys.py), entry ids qualified with their
    partition (``Keyspace.qualify``); the commands on pending entries are streams/pending.py's."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._r = redis
        self.keys = ks = Keyspace(settings)
        self.partitions = ks.partitions
        # Partition 0's keys: the only ones with one partition (the default).
        self.stream, self.retry_key, self.units_key = ks.stream(0), ks.retry(0), ks.units(0)
        self._move_due = redis.register_script(MOVE_DUE)
        self._ack = redis.register_script(ACK)
        self._xadd_many = redis.register_script(XADD_MANY)  # EVALSHA; on NOSCRIPT, loaded and called again
        self._pending = PendingEntries(redis, ks)

    # --- partition plumbing -------------------------------------------------------------------

    def partition_of(self, user_id: str) -> int:
        return self.keys.of(user_id)

    async def check_partitions(self) -> None:
        """Record the partition count at the first start; refuse to run with another one later."""
        async with redis_errors("partitions record"):
            await self._r.set(self.keys.record(), self.keys.count, nx=True)
            recorded = int(await self._r.get(self.keys.record()) or self.keys.count)
        if recorded != self.keys.count:
            raise PartitionsChanged(
                f"NOTIFLOW_STREAM_PARTITIONS is {self.keys.count} but this deployment runs {recorded} partitions "
                "(recorded in Redis): drain and reset first, see docs/cluster.md"
            )

    # --- the streams --------------------------------------------------------------------------

    async def add(self, entries: list[StreamEntry]) -> list[str]:
        """XADD every entry into its users' partition (an entry naming users of several partitions is split),
        one script call per partition (one command, one reply), fresh socket entries in bundles
        (streams/bundle.py); returns the ids of the stream entries written."""
        if not entries:
            return []
        parts = split_entries(self.keys, entries)
        async with redis_errors("xadd"):
            ids = await each(self._add(p, part) for p, part in parts.items())
        return [i for part_ids in ids for i in part_ids]

    async def _add(self, p: int, entries: list[StreamEntry]) -> list[str]:
        args: list[str] = [str(len(entries))]
        for packed_fields in bundle.pack(entries):
            fields = [x for kv in packed_fields.items() for x in kv]
            args.append(str(len(fields)))
            args += fields
        ids = await self._xadd_many(keys=[self.keys.stream(p), self.keys.units(p)], args=args)
        return [self.keys.qualify(p, _text(i)) for i in ids]

    async def ensure_group(self) -> None:
        """Create each partition's consumer group (and stream) if missing; a no-op when they exist."""
        async with redis_errors("xgroup create"):
            await each(self._ensure_group(p) for p in self.partitions)

    async def _ensure_group(self, p: int) -> None:
        stream, units = self.keys.stream(p), self.keys.units(p)
        try:
            await self._r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # A stream from before the units were kept: its entries count one each (unless something was
        # added since, which created the count: those older entries then count nothing).
        await self._r.set(units, await self._r.xlen(stream), nx=True)

    async def read(
        self, consumer: str, count: int, block_ms: int, partition: int = 0
    ) -> list[tuple[str, dict[str, str]]]:
        """New entries of one partition for this consumer; recreates the groups if Redis lost them."""
        async with redis_errors("xreadgroup"):
            try:
                resp: Any = await self._r.execute_command(  # type: ignore[no-untyped-call]
                    "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, "BLOCK", block_ms,
                    "STREAMS", self.keys.stream(partition), ">", **RAW,
                )
            except Exception as exc:
                if not is_nogroup(exc):
                    raise
                await self._ensure_group(partition)
                return []
        out: list[tuple[str, dict[str, str]]] = []
        for _stream, entries in resp or []:
            out.extend((self.keys.qualify(partition, _text(i)), _fields(f) or {}) for i, f in entries)
        return out

    async def ack(self, entry_ids: list[str], units: list[int] | None = None) -> None:
        """XACK and XDEL in one script call per partition: the streams then hold only unfinished work, so their
        length is the backlog; ``units`` (one each by default) are what each entry counted towards it."""
        if not entry_ids:
            return
        counts = units if units is not None else [1] * len(entry_ids)
        async with redis_errors("xack"):
            await each(
                self._ack(keys=[self.keys.stream(p), self.keys.units(p)], args=[GROUP, *(
                    x for i in at for x in (bare(entry_ids[i]), str(counts[i])))])
                for p, at in by_partition(entry_ids).items()
            )

    # --- pending entries (streams/pending.py) ---------------------------------------------------

    async def idle(self, min_idle_ms: int, count: int) -> list[Pending]:
        return await self._pending.idle(min_idle_ms, count)

    async def claim(
        self, consumer: str, min_idle_ms: int, entry_ids: list[str]
    ) -> list[tuple[str, dict[str, str] | None]]:
        return await self._pending.claim(consumer, min_idle_ms, entry_ids)

    async def keep(self, consumer: str, entry_ids: list[str]) -> None:
        await self._pending.keep(consumer, entry_ids)

    async def backlog(self) -> int:
        """The backlog units of every partition (see ``units``): what ingestion's bound (I9) is compared with."""
        async with redis_errors("backlog units"):
            values = await each(self._r.get(self.keys.units(p)) for p in self.partitions)
        return sum(int(v or 0) for v in values)

    # --- the retry schedule -----------------------------------------------------------------

    async def schedule(self, items: list[tuple[str, int]]) -> None:
        """ZADD (member, due time in ms) pairs, one command per partition."""
        if not items:
            return
        parts: dict[int, dict[str, int]] = defaultdict(dict)
        for member, due in items:
            parts[self.keys.of(orjson.loads(member)["u"]) if self.keys.count > 1 else 0][member] = due
        async with redis_errors("zadd"):
            await each(self._r.zadd(self.keys.retry(p), m) for p, m in parts.items())

    async def move_due(self, limit: int, now_ms: int | None = None) -> int:
        """Move up to ``limit`` due retries of each partition back into its stream; returns how many moved."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        async with redis_errors("move due retries"):
            moved = await each(
                self._move_due(keys=[self.keys.retry(p), self.keys.stream(p), self.keys.units(p)], args=[now, limit])
                for p in self.partitions
            )
        return sum(int(n) for n in moved)

    async def scheduled(self) -> int:
        async with redis_errors("zcard"):
            return sum(await each(self._r.zcard(self.keys.retry(p)) for p in self.partitions))

    # --- the epochs: tell whether Redis lost a partition's data -----------------------------------

    async def claim_epochs(self) -> list[int]:
        """The partitions whose epoch key was missing and this call created: Redis is new or lost their data
        (a restart, or a failover to a replica that had not received them), and the caller must rebuild their
        streams and schedules from PostgreSQL."""
        async with redis_errors("epoch"):
            made = await each(self._r.set(self.keys.epoch(p), uuid.uuid4().hex, nx=True) for p in self.partitions)
        return [p for p, m in zip(self.partitions, made, strict=True) if m]

    async def figures(self) -> dict[str, int]:
        """Streams' length, the groups' pending entries and lag, and the retry schedules' depth, summed over the
        partitions: one round trip per partition."""
        async with redis_errors("stream figures"):
            rows = await each(self._figures(p) for p in self.partitions)
        return {k: sum(r[k] for r in rows) for k in rows[0]}

    async def _figures(self, p: int) -> dict[str, int]:
        pipe = self._r.pipeline(transaction=False)
        pipe.xlen(self.keys.stream(p))
        pipe.zcard(self.keys.retry(p))
        pipe.xinfo_groups(self.keys.stream(p))
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
            lengths = await each(self._r.xlen(self.keys.stream(p)) for p in self.partitions)
        return {"stream_length": sum(map(int, lengths)), "retry_scheduled": await self.scheduled()}
