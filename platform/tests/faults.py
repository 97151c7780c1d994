"""Fault-injecting wrappers of the real adapters, for the tests that keep the real stores.

A wrapper has its port's shape (notiflow/service/ports.py), passes every call through to the real adapter, and
raises, hangs or holds the calls named. It goes in through ``Wrappers``: ``create_app(settings, wrappers=...)``
and the worker factories' ``wrappers=`` build the real adapter and hand it to the wrapper's ``around``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any


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
        self._watched: dict[str, list[tuple[Any, ...]]] = {}

    def watch(self, name: str) -> list[tuple[Any, ...]]:
        """The positional arguments of every later call of ``name``, in call order (the list fills as they come)."""
        return self._watched.setdefault(name, [])

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
            if name in self._watched:
                self._watched[name].append(args)
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
