"""Group commit: callers submit items one by one, a single task flushes whatever has queued up.

While one flush is in flight (a PostgreSQL commit waiting for fsync), new submissions queue; the next
flush takes them all at once. Under load the batches grow by themselves, and an idle system still
answers at once: no timer adds latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

#: A flush returns, per item and in order, its result or the exception that item failed with.
Flush = Callable[[list[T]], Awaitable[list[R | BaseException]]]


class BatcherClosed(RuntimeError):
    """The batcher no longer takes items (the process is shutting down)."""


class Batcher(Generic[T, R]):
    """Collects submitted items and hands them to ``flush`` in batches of at most ``max_batch``."""

    def __init__(self, flush: Flush[T, R], *, max_batch: int, name: str) -> None:
        self._flush = flush
        self._max = max_batch
        self._name = name
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self._name}")

    async def submit(self, item: T) -> R:
        if self._closing:
            raise BatcherClosed(f"{self._name} is shutting down")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        self._wake.set()
        # Shield: a caller that goes away (client disconnect) must not cancel a commit in progress.
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        while not (self._closing and not self._queue):
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            items = [i for i, _ in batch]
            try:
                results = await self._flush(items)
            except Exception as exc:  # noqa: BLE001 - the flush failed: every item of the batch fails with it
                results = [exc] * len(items)
            self.batches += 1
            self.items += len(items)
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def close(self, grace_s: float) -> None:
        """Stop taking items, flush what is queued within ``grace_s``, then cancel."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace_s)
        except TimeoutError:
            self._task.cancel()
            log.warning("batcher cancelled with work queued", extra={"batcher": self._name})
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(BatcherClosed(f"{self._name} shut down"))
