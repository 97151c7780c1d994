"""Group commit: callers submit items one by one, a single task flushes whatever has queued up.

While one flush is in flight (a PostgreSQL commit waiting for fsync), new submissions queue; the next
flush takes them all at once. Under load the batches grow by themselves, and an idle system still
answers at once: no timer adds latency.

Unless asked to: with ``gather_s`` a flush starts only once its oldest item is that old (or ``max_batch`` items
wait). For writes whose caller need not hear at once (socket acks): at moderate rates each flush would
otherwise carry one or two items, and a statement's fixed cost (about 0.5 ms of PostgreSQL CPU for a socket
ack on the partitioned record, docs/perf/2026-12-07-ack-cost.md) then dwarfs what each item costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

#: A flush returns, per item and in order, its result or the exception that item failed with.
Flush = Callable[[list[T]], Awaitable[list[R | BaseException]]]
#: Told a group's outcome, in the flush's task, once the flush is over: the group's results, or the exception
#: the whole flush failed with. What ``add`` takes instead of handing back a future (no future, no task, no
#: callback scheduled per group: the socket ack path's groups are single ack frames, thousands per second).
Done = Callable[[list[R | BaseException] | BaseException], None]


class BatcherClosed(RuntimeError):
    """The batcher no longer takes items (the process is shutting down)."""


class Batcher(Generic[T, R]):
    """Collects submitted items and hands them to ``flush`` in batches of at most ``max_batch``."""

    def __init__(self, flush: Flush[T, R], *, max_batch: int, name: str, gather_s: float = 0.0) -> None:
        """``gather_s``: how old the oldest queued item may grow before a flush starts, so that more join it
        (unless ``max_batch`` items are queued). 0: no wait, a batch is what queued during the last flush."""
        self._flush = flush
        self._max = max_batch
        self._name = name
        self._gather_s = gather_s
        self._since: float | None = None  # loop time the oldest queued item arrived (gathering only)
        self._count = 0  # items queued
        self._hurry = asyncio.Event()  # a gathering flush goes now: max_batch items queued, or closing
        # Each submission is a group of items with one future for the group's results: a group is never
        # split between flushes, so a batch request commits in one transaction or not at all.
        self._queue: list[tuple[list[T], asyncio.Future[list[R | BaseException]] | Done[R]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self._name}")

    async def submit(self, item: T) -> R:
        (result,) = await self.submit_many([item])
        if isinstance(result, BaseException):
            raise result
        return result

    async def submit_many(self, items: list[T]) -> list[R | BaseException]:
        """Submit items that are flushed together (in one flush, whatever ``max_batch`` says); per item, its
        result or the exception that item failed with. A failure of the whole flush is raised."""
        # Shield: a caller that goes away (client disconnect) must not cancel a commit in progress.
        return await asyncio.shield(self.enqueue(items))

    def enqueue(self, items: list[T]) -> asyncio.Future[list[R | BaseException]]:
        """``submit_many`` without waiting: the future completes after the flush (no task per caller)."""
        fut: asyncio.Future[list[R | BaseException]] = asyncio.get_running_loop().create_future()
        self._put(items, fut)
        return fut

    def add(self, items: list[T], done: Done[R]) -> None:
        """``enqueue`` with a callback instead of a future: ``done`` is called with the group's outcome (see
        ``Done``); it must not raise. Raises BatcherClosed when shutting down, as ``enqueue`` does."""
        self._put(items, done)

    def _put(self, items: list[T], waiter: asyncio.Future[list[R | BaseException]] | Done[R]) -> None:
        if self._closing:
            raise BatcherClosed(f"{self._name} is shutting down")
        if not self._queue and self._gather_s > 0:
            self._since = asyncio.get_running_loop().time()
        self._queue.append((items, waiter))
        self._count += len(items)
        if self._count >= self._max:
            self._hurry.set()
        self._wake.set()

    def _take(self) -> list[tuple[list[T], asyncio.Future[list[R | BaseException]] | Done[R]]]:
        """Whole groups, oldest first, up to ``max_batch`` items (always at least one group)."""
        n = count = 0
        for items, _ in self._queue:
            if n and count + len(items) > self._max:
                break
            n += 1
            count += len(items)
        batch, self._queue = self._queue[:n], self._queue[n:]
        self._count -= count
        # What stays queued waited during the flush in flight: it goes with the next flush, no further gathering.
        self._since = None
        return batch

    async def _gather(self) -> None:
        """Let the batch grow until its oldest item is ``gather_s`` old or ``max_batch`` items are queued."""
        if self._since is None or self._closing:
            return
        wait = self._since + self._gather_s - asyncio.get_running_loop().time()
        if wait > 0 and self._count < self._max:
            self._hurry.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), wait)

    async def _run(self) -> None:
        while not (self._closing and not self._queue):
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            batch = self._take()
            items = [i for group, _ in batch for i in group]
            failed: Exception | None = None
            try:
                results = await self._flush(items)
            except Exception as exc:  # noqa: BLE001 - the flush failed: every item of the batch fails with it
                failed, results = exc, []
            self.batches += 1
            self.items += len(items)
            start = 0
            for group, waiter in batch:
                _settle(waiter, failed if failed is not None else results[start : start + len(group)])
                start += len(group)

    async def close(self, grace_s: float) -> None:
        """Stop taking items, flush what is queued within ``grace_s``, then cancel."""
        self._closing = True
        self._hurry.set()
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace_s)
        except TimeoutError:
            self._task.cancel()
            log.warning("batcher cancelled with work queued", extra={"batcher": self._name})
        for _, waiter in self._queue:
            _settle(waiter, BatcherClosed(f"{self._name} shut down"))


def _settle(
    waiter: asyncio.Future[list[R | BaseException]] | Done[R], outcome: list[R | BaseException] | BaseException
) -> None:
    """Hand a group its outcome: its future's result or exception, or its callback's argument."""
    if not isinstance(waiter, asyncio.Future):
        try:
            waiter(outcome)
        except Exception:
            log.exception("batcher callback failed")
    elif waiter.done():
        return
    elif isinstance(outcome, BaseException):
        waiter.set_exception(outcome)
    else:
        waiter.set_result(outcome)
