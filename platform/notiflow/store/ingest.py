"""SQL of ingestion: one transaction commits a whole batch of accepted notifications."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from notiflow.models import NewNotification

# Keys are claimed in sorted order, and so are user_seqs rows: two batches that share keys or users
# then lock them in the same order and cannot deadlock.
_CLAIM_KEYS = """
INSERT INTO idempotency_keys AS k (key, request_hash, notification_id, response)
SELECT key, hash, nid, resp
FROM unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[]) AS t(key, hash, nid, resp)
ORDER BY key
ON CONFLICT (key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, notification_id = EXCLUDED.notification_id,
        response = EXCLUDED.response, created_at = now()
    WHERE k.created_at < now() - interval '24 hours'
RETURNING key
"""

_EXISTING_KEYS = "SELECT key, request_hash, response FROM idempotency_keys WHERE key = ANY($1::text[])"

_INSERT_NOTIFICATIONS = """
INSERT INTO notifications (id, event, payload, webhook_url, expires_at, recipients)
SELECT id, event, payload, hook, CASE WHEN ttl IS NULL THEN NULL ELSE now() + ttl * interval '1 second' END, n
FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int[], $6::int[])
    AS t(id, event, payload, hook, ttl, n)
"""

_BUMP_SEQS = """
INSERT INTO user_seqs AS s (user_id, last_seq)
SELECT u, c FROM unnest($1::text[], $2::bigint[]) AS t(u, c) ORDER BY u
ON CONFLICT (user_id) DO UPDATE SET last_seq = s.last_seq + EXCLUDED.last_seq
RETURNING user_id, last_seq
"""

_INSERT_DELIVERIES = """
INSERT INTO deliveries (notification_id, user_id, seq, webhook_status)
SELECT nid, uid, seq, hook FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[]) AS t(nid, uid, seq, hook)
"""

_MARK_ENQUEUED = "UPDATE notifications SET enqueued = true WHERE id = ANY($1::uuid[]) AND NOT enqueued"


@dataclass(slots=True)
class KeyClaim:
    """Result of claiming idempotency keys: which this batch won, and what the others hold."""

    won: set[str]
    existing: dict[str, tuple[str, Any]]  # key -> (request_hash, stored response)


def accepted_body(item: NewNotification) -> dict[str, Any]:
    """The 202 body; stored with the idempotency key so that a replay answers the same."""
    return {"id": str(item.id), "status": "accepted", "recipients": len(item.user_ids)}


async def claim_idempotency_keys(conn: Any, items: list[NewNotification]) -> KeyClaim:
    """Claim each item's key; a key held by a live (< 24 h) earlier request is not won."""
    keyed = [i for i in items if i.idempotency_key]
    if not keyed:
        return KeyClaim(set(), {})
    rows = await conn.fetch(
        _CLAIM_KEYS,
        [i.idempotency_key for i in keyed],
        [i.request_hash for i in keyed],
        [i.id for i in keyed],
        [orjson.dumps(accepted_body(i)).decode() for i in keyed],
    )
    won = {r["key"] for r in rows}
    lost = [i.idempotency_key for i in keyed if i.idempotency_key not in won]
    existing: dict[str, tuple[str, Any]] = {}
    if lost:
        for r in await conn.fetch(_EXISTING_KEYS, lost):
            existing[r["key"]] = (r["request_hash"], orjson.loads(r["response"]))
    return KeyClaim(won, existing)


async def insert_notifications(conn: Any, items: list[NewNotification]) -> None:
    """Insert the notifications and one delivery per recipient, assigning per-user seqs in batch order."""
    if not items:
        return
    await conn.execute(
        _INSERT_NOTIFICATIONS,
        [i.id for i in items],
        [i.event for i in items],
        [i.payload_json for i in items],
        [i.webhook_url for i in items],
        [i.ttl_seconds for i in items],
        [len(i.user_ids) for i in items],
    )
    counts = Counter(u for i in items for u in i.user_ids)
    users = sorted(counts)
    rows = await conn.fetch(_BUMP_SEQS, users, [counts[u] for u in users])
    # The counter now ends at last_seq; this batch owns the `count` values just below it.
    next_seq = {r["user_id"]: r["last_seq"] - counts[r["user_id"]] + 1 for r in rows}
    nids: list[uuid.UUID] = []
    uids: list[str] = []
    seqs: list[int] = []
    hooks: list[str | None] = []
    for item in items:
        hook = "pending" if item.webhook_url else None
        for user in item.user_ids:
            nids.append(item.id)
            uids.append(user)
            seqs.append(next_seq[user])
            next_seq[user] += 1
            hooks.append(hook)
    await conn.execute(_INSERT_DELIVERIES, nids, uids, seqs, hooks)


async def mark_enqueued(pool: Any, notification_ids: list[uuid.UUID]) -> None:
    """Clear the outbox flag after XADD. Losing this write only causes a harmless re-enqueue, so
    it does not wait for fsync."""
    if not notification_ids:
        return
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit TO off")
        await conn.execute(_MARK_ENQUEUED, notification_ids)
