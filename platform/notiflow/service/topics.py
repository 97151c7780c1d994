"""Topic subscriptions: subscribe, unsubscribe, list (docs/contract.md "Topics"). Sending to a topic is ingest's
(service/ingest.py), its expansion into deliveries the stream worker's (service/expansion.py)."""

from __future__ import annotations

from typing import Any

from notiflow.service.ports import Record
from notiflow.store import topics as sql
from notiflow.store.pool import pg_errors, pg_write_errors, retry_conflicts


class TopicService:
    """The subscription use cases. Each is one statement: subscribing twice, or unsubscribing a user who is not
    subscribed, changes nothing (PUT and DELETE are idempotent)."""

    def __init__(self, *, pool: Record) -> None:
        self._pool = pool

    async def subscribe(self, topic: str, user_id: str) -> None:
        async def run() -> None:
            async with pg_errors("subscribe"), self._pool.acquire() as conn, pg_write_errors("subscribe"):
                await sql.subscribe(conn, topic, user_id)

        await retry_conflicts(run)

    async def unsubscribe(self, topic: str, user_id: str) -> None:
        async def run() -> None:
            async with pg_errors("unsubscribe"), self._pool.acquire() as conn, pg_write_errors("unsubscribe"):
                await sql.unsubscribe(conn, topic, user_id)

        await retry_conflicts(run)

    async def subscribers(self, topic: str, after: str, limit: int) -> dict[str, Any]:
        """One page of the topic's subscribers now, by user id after ``after``; ``next_after`` names where the
        next page starts (None: this was the last)."""
        async with pg_errors("subscribers"), self._pool.acquire() as conn:
            # One more than asked: a full page followed by nothing is the last one.
            found = await sql.subscribers(conn, topic, after, limit + 1)
        page = found[:limit]
        return {"topic": topic, "subscribers": page, "next_after": page[-1] if len(found) > limit else None}
