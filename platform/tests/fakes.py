"""Memory fakes of the ports (notiflow/service/ports.py) and the fault-injecting wrappers of the real adapters.

The fakes, in the spirit of dramatiq's StubBroker, make a unit test of service logic simple and fast: no Redis,
no PostgreSQL, every call answered at once and kept for the test to read. Tests about delivery keep the real
stores (integration/); there, a fault goes in as a wrapper around the real adapter, handed to the process
through ``Wrappers`` (``create_app(settings, wrappers=...)``, the worker factories' ``wrappers=``): the
wrapper is each port's own shape, passes every call through, and raises, hangs or holds the calls named.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from notiflow.models import StreamEntry
from notiflow.service.ports import NodeBatch, Pending
from notiflow.streams import bundle

# --- memory fakes ------------------------------------------------------------------------------------------


class StubWorkLog:
    """The work stream and retry schedule in memory: one consumer group, entries pending once read."""

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

    async def ensure_group(self) -> None:
        return None

    async def read(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, dict[str, str]]]:
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

    async def claim_epoch(self) -> bool:
        return False

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


# --- fault-injecting wrappers of the real adapters -----------------------------------------------------------


async def never_answers(*_: object, **__: object) -> Any:
    """A store that takes the command and never answers (a black hole)."""
    await asyncio.Event().wait()


async def absorb_cancellation(done: asyncio.Event) -> None:
    """Wait for ``done``, swallowing every cancellation on the way."""
    while not done.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await done.wait()


class StuckWebhooks:
    """The stream worker's downstream client (``stream_worker(settings, webhooks)``) whose calls never return:
    cancelled like any call (``cancelled`` counts them), or, given ``deaf``, absorbing the cancellation until
    that event is set. ``calls`` is set once a call is under way."""

    def __init__(self, deaf: asyncio.Event | None = None) -> None:
        self.deaf = deaf
        self.calls = asyncio.Event()
        self.cancelled = 0

    async def send(self, work: Any) -> None:
        self.calls.set()
        if self.deaf is not None:
            await absorb_cancellation(self.deaf)
            return
        try:
            await never_answers()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def aclose(self) -> None:
        return None


class Faulty:
    """Any async port (WorkLog, Presence, Routes, Buckets) around the real adapter: each call passes through
    unless a fault is set for its method: ``fail`` raises, ``hang`` never answers, ``hold`` waits for the
    returned event (``waiting[name]`` is set once a call waits). ``calls`` counts the calls per method.
    Hand ``around`` to ``Wrappers``: the process builds the real adapter, and this wraps it."""

    def __init__(self) -> None:
        self.inner: Any = None
        self.calls: Counter[str] = Counter()
        self.waiting: dict[str, asyncio.Event] = {}
        self._faults: dict[str, Callable[[], Any]] = {}

    def around(self, inner: Any) -> Any:
        self.inner = inner
        return self

    def fail(self, name: str, exc: BaseException, when: Callable[..., bool] | None = None) -> None:
        """Calls of ``name`` raise ``exc`` (those whose arguments ``when`` accepts, given ``when``)."""
        def raise_it(*args: Any, **kwargs: Any) -> Any:
            if when is None or when(*args, **kwargs):
                raise exc
        self._faults[name] = raise_it

    def hang(self, name: str) -> None:
        self._faults[name] = never_answers

    def hold(self, name: str) -> asyncio.Event:
        release, waiting = asyncio.Event(), self.waiting.setdefault(name, asyncio.Event())

        async def wait(*_: Any, **__: Any) -> None:
            waiting.set()
            await release.wait()
        self._faults[name] = wait
        return release

    def deafen(self, name: str, done: asyncio.Event) -> None:
        """Calls of ``name`` absorb their cancellation, as a client library inside a read may, until ``done``."""
        entered = self.waiting.setdefault(name, asyncio.Event())

        async def deaf(*_: Any, **__: Any) -> None:
            entered.set()
            await absorb_cancellation(done)
        self._faults[name] = deaf

    def heal(self) -> None:
        self._faults.clear()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(real):
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            fault = self._faults.get(name)
            if fault is not None:
                await fault(*args, **kwargs) if inspect.iscoroutinefunction(fault) else fault(*args, **kwargs)
            return await real(*args, **kwargs)
        return call


class FaultyRecord:
    """The record (asyncpg's pool) around the real one: ``down`` refuses every connection; ``lose_replies``
    lets each statement commit and then breaks the connection before its reply; ``stall`` makes every
    ``acquire`` wait forever. ``hold_one`` takes a connection and never gives it back."""

    def __init__(self) -> None:
        self.inner: Any = None
        self.down = False
        self.lose_replies = False
        self.stall = False
        self.refused = 0

    def around(self, inner: Any) -> FaultyRecord:
        self.inner = inner
        return self

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:  # noqa: ASYNC109 - the pool's
        if self.stall:
            await never_answers()
        if self.down:
            self.refused += 1
            raise ConnectionRefusedError("injected PostgreSQL outage")
        async with self.inner.acquire(timeout=timeout) as conn:
            yield _ReplyLost(conn) if self.lose_replies else conn

    async def hold_one(self) -> Any:
        """A connection taken from the real pool and never given back (a caller that hangs with it)."""
        return await self.inner.acquire()


class _ReplyLost:
    """A connection whose server commits each statement, and then the connection breaks before the reply."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await self._inner.execute(*args, **kwargs)
        raise ConnectionResetError("injected: reply lost after the commit")

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        await self._inner.fetch(*args, **kwargs)
        raise ConnectionResetError("injected: reply lost after the commit")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
