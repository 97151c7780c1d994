"""The Redis keyspace of the work: which partition a user belongs to, and the key names of each partition.

Users are spread over ``NOTIFLOW_STREAM_PARTITIONS`` partitions by the CRC-32 of their id. Every key of one
partition carries the hash tag ``{p<n>}``, so that a partition lives in one Redis Cluster slot: its stream and
consumer group, its retry schedule, its backlog counter, its epoch, the presence of its users and the
liveness of the nodes as its lookups see it. A Lua script is only ever given the keys of one partition.

With one partition on a standalone Redis (the default) the keys keep the names they had before partitions.
Entry ids are qualified with their partition (``"<p>/<id>"``) when there is more than one, so that acks and
claims find their stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from redis.crc import key_slot

from notiflow.config import Settings
from notiflow.models import StreamEntry

T = TypeVar("T")
#: Where the partition count is recorded at the first start (in partition 0's slot).
PARTITIONS_RECORD = "partitions"
#: The consumer group of every partition's stream.
GROUP = "notiflow-workers"


class Keyspace:
    def __init__(self, settings: Settings) -> None:
        self.count = settings.stream_partitions
        self.tagged = settings.partitioned
        self._s = settings
        self.partitions = range(self.count)

    def of(self, user_id: str) -> int:
        """The partition of ``user_id``."""
        if self.count == 1:
            return 0
        return zlib.crc32(user_id.encode()) % self.count

    def group(self, users: Iterable[str]) -> dict[int, list[str]]:
        """``users`` per partition, in order."""
        out: dict[int, list[str]] = defaultdict(list)
        for u in users:
            out[self.of(u)].append(u)
        return out

    def qualify(self, p: int, entry_id: str) -> str:
        """The id of an entry of partition ``p`` as the work log hands it out."""
        return entry_id if self.count == 1 else f"{p}/{entry_id}"

    def _tagged(self, p: int, name: str) -> str:
        return self._s.key(f"{{p{p}}}", name)

    def stream(self, p: int) -> str:
        return f"{self._s.stream_key}:{{p{p}}}" if self.tagged else self._s.stream_key

    def retry(self, p: int) -> str:
        return self._tagged(p, "retry") if self.tagged else self._s.key("retry")

    def units(self, p: int) -> str:
        return self._tagged(p, "stream-units") if self.tagged else self._s.key("stream-units")

    def epoch(self, p: int) -> str:
        return self._tagged(p, "epoch") if self.tagged else self._s.key("epoch")

    def presence(self, user_id: str) -> str:
        if not self.tagged:
            return self._s.key("presence", user_id)
        return self._s.key(f"{{p{self.of(user_id)}}}", "presence", user_id)

    def nodes(self, p: int) -> str:
        """A ZSET of gateway nodes scored by the time (ms, Redis's clock) until which each counts as alive, as
        the presence scripts of partition ``p`` see it: every node's heartbeat refreshes it in every partition."""
        return self._tagged(p, "nodes") if self.tagged else self._s.key("nodes")

    def alive(self, node_id: str) -> str:
        """A node's own liveness key (with a TTL): what tells a node that Redis lost its data."""
        return self._s.key("node", node_id, "alive")

    def record(self) -> str:
        return self._tagged(0, PARTITIONS_RECORD) if self.tagged else self._s.key(PARTITIONS_RECORD)


def by_partition(entry_ids: list[str]) -> dict[int, list[int]]:
    """Positions in ``entry_ids`` (qualified) per partition."""
    out: dict[int, list[int]] = defaultdict(list)
    for i, qualified in enumerate(entry_ids):
        p, sep, _ = qualified.partition("/")
        out[int(p) if sep else 0].append(i)
    return out


def bare(entry_id: str) -> str:
    """A qualified entry id without its partition: the id in its stream."""
    return entry_id.rpartition("/")[2]


async def each(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Run one call per partition at once (the cluster client sends each to the node of its slot)."""
    return list(await asyncio.gather(*calls))


def split_entries(keys: Keyspace, entries: list[StreamEntry]) -> dict[int, list[StreamEntry]]:
    """The entries per partition, in order; an entry naming users of several partitions becomes one entry per
    partition (with each recipient's seq, when it carries its frame)."""
    if keys.count == 1:
        return {0: entries}
    out: dict[int, list[StreamEntry]] = defaultdict(list)
    for e in entries:
        if len(e.user_ids) == 1:
            out[keys.of(e.user_ids[0])].append(e)
            continue
        at: dict[int, list[int]] = defaultdict(list)
        for i, u in enumerate(e.user_ids):
            at[keys.of(u)].append(i)
        if len(at) == 1:
            out[next(iter(at))].append(e)
            continue
        c = e.carried
        for p, idx in at.items():
            users = tuple(e.user_ids[i] for i in idx)
            carried = None if c is None else dataclasses.replace(c, seqs=tuple(c.seqs[i] for i in idx))
            out[p].append(dataclasses.replace(e, user_ids=users, carried=carried))
    return out


def partition_slots(count: int) -> list[int]:
    """The Redis Cluster slot of each partition (the slot of its hash tag ``{p<n>}``, whatever the key prefix):
    what to spread evenly over the masters (docs/cluster.md)."""
    return [key_slot(f"p{p}".encode()) for p in range(count)]
