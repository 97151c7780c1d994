"""Reads and acknowledgements: a notification's state, a user's offline queue, acks, the DLQ."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson

from notiflow import metrics
from notiflow.batching import Batcher, Done
from notiflow.errors import ApiError, NotFound
from notiflow.models import Channel, StreamEntry
from notiflow.roles import GatewaySettings
from notiflow.service.dispatch_log import DispatchLog
from notiflow.service.ports import Record, WorkLog
from notiflow.store import dlq as dlq_sql
from notiflow.store import queries as sql
from notiflow.store.pool import pg_errors, retry_conflicts

log = logging.getLogger(__name__)


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    row["payload"] = orjson.Fragment(row["payload"])  # spliced into the response as stored
    if "collapse_key" in row and row["collapse_key"] is None:
        del row["collapse_key"]  # listed only for a notification that has one, as in its frame
    return row


class QueryService:
    """Use cases behind the read, ack and DLQ endpoints, and the socket ack path."""

    def __init__(
        self, *, settings: GatewaySettings, pool: Record, work: WorkLog, handoffs: DispatchLog | None = None
    ) -> None:
        """``handoffs``: the node's log of the frames it pushed: a committed ack settles them (no hand-off
        write)."""
        self._s = settings
        self._pool = pool
        self._work = work
        self._handoffs = handoffs
        self._acks: Batcher[tuple[str, list[str]], int] = Batcher(
            self._flush_acks, max_batch=500, name="socket-acks", gather_s=settings.ws_ack_gather_ms / 1000
        )

    def start(self) -> None:
        self._acks.start()

    async def close(self, grace_s: float) -> None:
        await self._acks.close(grace_s)

    async def notification(self, nid: uuid.UUID, user_id: str | None, limit: int) -> dict[str, Any]:
        async with pg_errors("get notification"), self._pool.acquire() as conn:
            found = await sql.get_notification(conn, nid, user_id, limit)
        if found is None:
            raise NotFound("notification")
        return _payload(found)

    async def offline(self, user_id: str, after_seq: int, limit: int) -> dict[str, Any]:
        async with pg_errors("offline queue"), self._pool.acquire() as conn:
            rows = await sql.offline_page(conn, user_id, after_seq, limit)
        return {
            "user_id": user_id,
            "notifications": [_payload(r) for r in rows],
            "next_after_seq": rows[-1]["seq"] if len(rows) == limit else None,
        }

    async def last_seq(self, user_id: str) -> int:
        """The highest seq committed for ``user_id`` (seqs commit in order: every one below it is committed)."""
        async with pg_errors("last seq"), self._pool.acquire() as conn:
            return await sql.last_seq(conn, user_id)

    async def ack(self, user_id: str, ids: list[uuid.UUID] | None, up_to_seq: int | None) -> int:
        async def write() -> int:
            async with pg_errors("ack"), self._pool.acquire() as conn:
                if ids is not None:
                    return await sql.ack_ids(conn, user_id, ids)
                return await sql.ack_up_to(conn, user_id, up_to_seq or 0)

        n = await retry_conflicts(write)
        metrics.ACKS.labels("http").inc(n)
        if ids is not None and self._handoffs is not None:
            self._handoffs.settle((user_id, str(nid)) for nid in ids)
        return n

    def ack_from_socket(self, user_id: str, ids: list[str], done: Done[int]) -> None:
        """Acks arriving over sockets (``ids``: UUIDs in text, checked by the transport) are batched across
        sockets into one statement (group commit). ``done`` hears the outcome after the commit: a list (the
        commit took it) or the exception that failed it; no future and no task per ack frame. Raises
        BatcherClosed when the gateway is shutting down."""
        self._acks.add([(user_id, ids)], done)

    async def _flush_acks(self, frames: list[tuple[str, list[str]]]) -> list[int | BaseException]:
        pairs = list(dict.fromkeys((user, nid) for user, ids in frames for nid in ids))

        async def write() -> int:
            async with pg_errors("socket acks"), self._pool.acquire() as conn:
                return await sql.ack_pairs(conn, pairs)

        metrics.ACKS.labels("socket").inc(await retry_conflicts(write))
        if self._handoffs is not None:
            self._handoffs.settle(pairs)
        return [len(ids) for _, ids in frames]

    async def open_for_users(self, after_seq: dict[str, int], per_user: int) -> list[dict[str, Any]]:
        """One page per user of its open notifications past its cursor (``after_seq``: user -> seq)."""
        async with pg_errors("resync"), self._pool.acquire() as conn:
            return await sql.open_for_users(conn, after_seq, per_user)

    # --- the DLQ ----------------------------------------------------------------------------

    async def dlq_list(self, after: int, user_id: str | None, event: str | None, limit: int) -> dict[str, Any]:
        async with pg_errors("dlq list"), self._pool.acquire() as conn:
            rows = await dlq_sql.list_entries(conn, after=after, user_id=user_id, event=event, limit=limit)
        return {"entries": rows, "next_after": rows[-1]["id"] if len(rows) == limit else None}

    async def dlq_replay(self, entry_id: int) -> dict[str, Any]:
        """Reset the delivery's channel and put it back on the stream; a second replay does nothing."""
        async with pg_errors("dlq replay"), self._pool.acquire() as conn, conn.transaction():
            taken = await dlq_sql.take_for_replay(conn, entry_id)
        if taken is None:
            raise NotFound("dlq entry")
        if taken is False:
            return {"id": entry_id, "replayed": False}
        if taken == dlq_sql.EXPIRED:
            raise ApiError(
                409, "notification_expired",
                "the entry's notification has expired: a replay would deliver nothing (the entry goes with it)",
            )
        assert isinstance(taken, tuple)
        nid, uid, channel = taken
        try:
            await self._work.add([StreamEntry(nid, (uid,), Channel(channel))])
        except Exception as exc:  # noqa: BLE001 - committed as pending: the stuck-work sweep enqueues it
            log.warning("replay enqueue failed; the reconciler will enqueue", extra={"error": str(exc)})
        return {"id": entry_id, "replayed": True}

    async def dlq_delete(self, entry_id: int) -> None:
        async with pg_errors("dlq delete"), self._pool.acquire() as conn:
            if not await dlq_sql.delete_entry(conn, entry_id):
                raise NotFound("dlq entry")

    async def dlq_purge(self) -> int:
        async with pg_errors("dlq purge"), self._pool.acquire() as conn:
            return await dlq_sql.purge(conn)
