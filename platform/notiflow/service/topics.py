"""Topic subscriptions: subscribe, unsubscribe, list (docs/contract.md "Topics"). Sending to a topic is ingest's
(service/ingest.py), its expansion into deliveries the stream worker's (service/expansion.py)."""

from __future__ import annotations

from typing import Any

from notiflow.batching import Batcher
from notiflow.service.ports import Record
from notiflow.store import topics as sql
from notiflow.store.pool import pg_errors, pg_write_errors, retry_conflicts

Change = tuple[str, str]  # (topic, user id)
#: Subscription changes per statement (group commit: a batch forms while the previous one commits).
CHANGES_MAX = 1000


class TopicService:
    """The subscription use cases. Subscribing twice, or unsubscribing a user who is not subscribed, changes
    nothing (PUT and DELETE are idempotent). Changes are group-committed: one statement per batch of requests."""

    def __init__(self, *, pool: Record) -> None:
        self._pool = pool
        self._subscribe: Batcher[Change, None] = Batcher(
            self._flush(sql.subscribe_pairs, "subscribe"), max_batch=CHANGES_MAX, name="subscribe")
        self._unsubscribe: Batcher[Change, None] = Batcher(
            self._flush(sql.unsubscribe_pairs, "unsubscribe"), max_batch=CHANGES_MAX, name="unsubscribe")

    def start(self) -> None:
        self._subscribe.start()
        self._unsubscribe.start()

    async def close(self, grace_s: float) -> None:
        await self._subscribe.close(grace_s)
        await self._unsubscribe.close(grace_s)

    async def subscribe(self, topic: str, user_id: str) -> None:
        await self._subscribe.submit((topic, user_id))

    async def unsubscribe(self, topic: str, user_id: str) -> None:
        await self._unsubscribe.submit((topic, user_id))

    def _flush(self, statement: Any, what: str) -> Any:
        async def flush(changes: list[Change]) -> list[BaseException | None]:
            pairs = list(dict.fromkeys(changes))

            async def run() -> None:
                async with pg_errors(what), self._pool.acquire() as conn, pg_write_errors(what):
                    await statement(conn, pairs)

            await retry_conflicts(run)  # two gateways' batches may deadlock: the victim goes again
            return [None] * len(changes)

        return flush

    async def subscribers(self, topic: str, after: str, limit: int) -> dict[str, Any]:
        """One page of the topic's subscribers now, by user id after ``after``; ``next_after`` names where the
        next page starts (None: this was the last)."""
        async with pg_errors("subscribers"), self._pool.acquire() as conn:
            # One more than asked: a full page followed by nothing is the last one.
            found = await sql.subscribers(conn, topic, after, limit + 1)
        page = found[:limit]
        return {"topic": topic, "subscribers": page, "next_after": page[-1] if len(found) > limit else None}
