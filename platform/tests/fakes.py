"""Memory fakes of the ports (notiflow/service/ports.py), in the spirit of dramatiq's StubBroker.

They make a unit test of service logic simple and fast: no Redis, no PostgreSQL, every call answered at once and
kept for the test to read. Tests about delivery keep the real stores (integration/), with faults injected by the
wrappers of faults.py.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson

from notiflow.models import StreamEntry
from notiflow.service.ports import NodeBatch, Pending
from notiflow.streams import bundle

# --- memory fakes ------------------------------------------------------------------------------------------


class StubWorkLog:
    """The work stream and retry schedule in memory: one consumer group, entries pending once read."""

    partitions = range(1)  # one partition: the fake has one stream

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, str]] = {}  # unread and pending entries, by id, in order
        self.pending: dict[str, tuple[str, int]] = {}  # entry id -> (consumer, times delivered)
        self.acked: list[str] = []
        self.retries: dict[str, int] = {}  # member -> due time (ms)
        self.units = 0
        self._ids = itertools.count(1)

    def added(self) -> list[StreamEntry]:
        """Every entry still in the stream, parsed (a bundle as its entries)."""
        return [e for f in self.entries.values() for e in bundle.parse(f)]

    async def add(self, entries: list[StreamEntry]) -> list[str]:
        ids = []
        for fields in bundle.pack(entries):
            entry_id = f"{next(self._ids)}-0"
            self.entries[entry_id] = fields
            ids.append(entry_id)
        self.units += len(entries)
        return ids

    async def backlog(self) -> int:
        return self.units

    def partition_of(self, user_id: str) -> int:
        return 0

    async def check_partitions(self) -> None:
        return None

    async def ensure_group(self) -> None:
        return None

    async def read(
        self, consumer: str, count: int, block_ms: int, partition: int = 0
    ) -> list[tuple[str, dict[str, str]]]:
        fresh = [i for i in self.entries if i not in self.pending][:count]
        for i in fresh:
            self.pending[i] = (consumer, 1)
        return [(i, self.entries[i]) for i in fresh]

    async def ack(self, entry_ids: list[str], units: list[int] | None = None) -> None:
        for i, n in zip(entry_ids, units or [1] * len(entry_ids), strict=True):
            if self.entries.pop(i, None) is not None:
                self.units = max(0, self.units - n)
            self.pending.pop(i, None)
            self.acked.append(i)

    async def idle(self, min_idle_ms: int, count: int) -> list[Pending]:
        return [Pending(i, c, min_idle_ms, n) for i, (c, n) in list(self.pending.items())[:count]]

    async def claim(
        self, consumer: str, min_idle_ms: int, entry_ids: list[str]
    ) -> list[tuple[str, dict[str, str] | None]]:
        out: list[tuple[str, dict[str, str] | None]] = []
        for i in entry_ids:
            if i in self.pending:
                self.pending[i] = (consumer, self.pending[i][1] + 1)
            out.append((i, self.entries.get(i)))
        return out

    async def keep(self, consumer: str, entry_ids: list[str]) -> None:
        return None

    async def schedule(self, items: list[tuple[str, int]]) -> None:
        self.retries.update(items)

    async def move_due(self, limit: int, now_ms: int | None = None) -> int:
        due = sorted((m for m, at in self.retries.items() if now_ms is None or at <= now_ms), key=self.retries.get)
        for member in due[:limit]:
            del self.retries[member]
            self.entries[f"{next(self._ids)}-0"] = _retry_fields(member)
            self.units += 1
        return len(due[:limit])

    async def scheduled(self) -> int:
        return len(self.retries)

    async def claim_epochs(self) -> list[int]:
        return []

    async def figures(self) -> dict[str, int]:
        return {"stream_length": len(self.entries), "stream_pending": len(self.pending),
                "group_lag": len(self.entries) - len(self.pending), "retry_scheduled": len(self.retries)}


def _retry_fields(member: str) -> dict[str, str]:
    parsed = orjson.loads(member)
    return {"n": parsed["n"], "u": parsed["u"], "c": parsed["c"]}


class MemoryPresence:
    """Presence in memory: sockets per user and node, and which nodes are alive (heartbeat until leave)."""

    def __init__(self) -> None:
        self.sockets: dict[str, Counter[str]] = {}  # user -> node -> open sockets
        self.alive: set[str] = set()

    async def connect(self, node_id: str, user_id: str) -> int:
        self.sockets.setdefault(user_id, Counter())[node_id] += 1
        return sum(n for node, n in self.sockets[user_id].items() if node in self.alive)

    async def disconnect(self, node_id: str, user_id: str) -> None:
        held = self.sockets.get(user_id, Counter())
        held[node_id] -= 1
        if held[node_id] <= 0:
            del held[node_id]

    async def heartbeat(self, node_id: str, counts: dict[str, int]) -> bool:
        was_alive = node_id in self.alive
        self.alive.add(node_id)
        return not was_alive and bool(counts)

    async def leave(self, node_id: str, user_ids: list[str]) -> None:
        self.alive.discard(node_id)
        for user in user_ids:
            self.sockets.get(user, Counter()).pop(node_id, None)

    async def live_nodes(self, user_ids: list[str]) -> dict[str, list[str]]:
        return {u: sorted(n for n in self.sockets.get(u, Counter()) if n in self.alive) for u in user_ids}

    async def live_sockets(self, user_id: str) -> int:
        return sum(n for node, n in self.sockets.get(user_id, Counter()).items() if node in self.alive)


class RecordingRoutes:
    """Publishes kept in ``published``; a node hears them while it is in ``listening``."""

    def __init__(self, listening: set[str] | None = None) -> None:
        self.listening = set(listening or ())
        self.published: list[dict[str, NodeBatch]] = []

    async def publish(self, per_node: dict[str, NodeBatch]) -> dict[str, int]:
        self.published.append(per_node)
        return {node: int(node in self.listening) for node in per_node}


class MemoryBuckets:
    """Token buckets in memory, refilled on ``advance(seconds)``: per request the ms to wait (0: taken)."""

    def __init__(self) -> None:
        self.tokens: dict[str, float] = {}

    def advance(self, seconds: float, rate_per_s: float, burst: int) -> None:
        self.tokens = {k: min(burst, t + seconds * rate_per_s) for k, t in self.tokens.items()}

    async def take(self, requests: list[tuple[str, int]], rate_per_s: float, burst: int) -> list[int]:
        out = []
        for identity, cost in requests:
            have = self.tokens.setdefault(identity, float(burst))
            if have >= cost:
                self.tokens[identity] = have - cost
                out.append(0)
            else:
                out.append(max(1, int((cost - have) / rate_per_s * 1000)))
        return out


class RecordingRecord:
    """A record whose connections keep every statement (method, SQL, arguments) in ``statements`` and answer
    ``rows`` (an empty result by default): enough for a service path whose SQL only writes."""

    def __init__(self, rows: list[Any] | None = None) -> None:
        self.statements: list[tuple[str, str, tuple[Any, ...]]] = []
        self.rows = rows or []
        self.connections = 0

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:  # noqa: ASYNC109 - the pool's
        self.connections += 1
        yield _RecordingConnection(self)


class _RecordingConnection:
    def __init__(self, record: RecordingRecord) -> None:
        self._record = record

    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # type: ignore[return-value]

    async def _keep(self, method: str, sql: str, args: tuple[Any, ...]) -> list[Any]:
        self._record.statements.append((method, sql, args))
        return self._record.rows

    async def execute(self, sql: str, *args: Any) -> str:
        await self._keep("execute", sql, args)
        return "OK"

    async def executemany(self, sql: str, args: Any) -> None:
        await self._keep("executemany", sql, (args,))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return await self._keep("fetch", sql, args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        rows = await self._keep("fetchrow", sql, args)
        return rows[0] if rows else {}

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = await self._keep("fetchval", sql, args)
        return rows[0] if rows else None


class NoRecord:
    """A record that must not be used: the path under test promises not to touch PostgreSQL."""

    def acquire(self, *, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]:
        raise AssertionError("this path must not touch PostgreSQL")
