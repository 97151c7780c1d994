"""SyncProducer: the Producer for code without an event loop (scripts, Django, Flask, Celery tasks).

It runs a Producer on an event loop of its own, in a daemon thread, so its methods block their caller
only; it is safe to call from several threads at once, and from a thread whose own loop is running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from notiflow.client.bodies import Accepted, SubscribersPage
from notiflow.client.producer import Producer
from notiflow.client.types import RequestRejected

T = TypeVar("T")


class SyncProducer:
    """The same sends as ``Producer`` (same arguments, same errors), blocking. Close it (or use ``with``)."""

    def __init__(self, urls: str | Sequence[str], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="notiflow-producer", daemon=True)
        self._thread.start()
        self._producer = self._run(self._open(urls, options))

    @staticmethod
    async def _open(urls: str | Sequence[str], options: dict[str, Any]) -> Producer:
        return Producer(urls, **options)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, user_ids: str | Sequence[str], event: str, payload: Mapping[str, Any] | None = None,
             **options: Any) -> Accepted:
        return self._run(self._producer.send(user_ids, event, payload, **options))

    def send_topic(self, topic: str, event: str, payload: Mapping[str, Any] | None = None,
                   **options: Any) -> Accepted:
        return self._run(self._producer.send_topic(topic, event, payload, **options))

    def send_many(self, notifications: Iterable[Mapping[str, Any]]) -> list[Accepted | RequestRejected]:
        return self._run(self._producer.send_many(list(notifications)))

    def subscribe(self, topic: str, user_id: str) -> None:
        self._run(self._producer.subscribe(topic, user_id))

    def unsubscribe(self, topic: str, user_id: str) -> None:
        self._run(self._producer.unsubscribe(topic, user_id))

    def subscribers_page(self, topic: str, *, after: str | None = None, limit: int = 100) -> SubscribersPage:
        return self._run(self._producer.subscribers_page(topic, after=after, limit=limit))

    def subscribers(self, topic: str, *, page_size: int = 100) -> Iterator[str]:
        """Every subscriber of the topic, a page of ``page_size`` per request (made as the iteration needs it)."""
        after: str | None = None
        while True:
            page = self.subscribers_page(topic, after=after, limit=page_size)
            yield from page["subscribers"]
            if page["next_after"] is None or page["next_after"] == after:  # no progress: never loop on one page
                return
            after = page["next_after"]

    @property
    def attempts(self) -> int:
        return self._producer.attempts

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._producer.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
