"""SQL of ingestion: one transaction commits a whole batch of accepted notifications."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from notiflow.ids import new_id
from notiflow.models import NewNotification

# Keys are claimed (locked) in a fixed order, and user_seqs rows in sorted order: two batches that share keys
# or users then lock them in the same order and cannot deadlock. The claim is one call of notiflow_claim_keys
# (migration 013): keys live in day partitions, and the function keeps a live key unique across them.
_CLAIM_KEYS = """
SELECT scope, key FROM notiflow_claim_keys($1::text[], $2::text[], $3::text[], $4::uuid[], $5::jsonb[], $6)
"""

# The live holder of each key that a claim lost: it met the holder's row or guard (copies) on today's partition or
# on a guard day after it (a claim made after midnight by a transaction younger than ours), or a key of before
# migration 013 in the legacy partition; only those partitions are read.
_EXISTING_KEYS = """
SELECT DISTINCT ON (k.scope, k.key) k.scope, k.key, k.request_hash, k.response
FROM idempotency_keys k JOIN unnest($1::text[], $2::text[]) AS t(scope, key) USING (scope, key)
WHERE (k.day BETWEEN (now() AT TIME ZONE 'UTC')::date
                 AND (now() AT TIME ZONE 'UTC')::date + greatest(1, ceil($3 / 86400))::int
       OR k.day < '1970-01-01')
  AND k.created_at >= now() - make_interval(secs => $3)
ORDER BY k.scope, k.key, k.created_at DESC
"""

#: An idempotency key as stored: unique per (scope, key), the scope being the API key that used it.
ScopedKey = tuple[str, str]

# One statement (one round trip, one implicit transaction) inserts the notifications (each expiring after its
# ttl, else after the retention period $10, s; in the era and day partition its id names, migration 009) and the
# commit's outbox row $16 (migration 015); bumps each user's seq counter by the number of new deliveries
# ($13/$14: each user once, with its count; rows locked in user order: no deadlocks between batches); and inserts
# the deliveries numbered in batch order below the new counter value: a delivery's $9 is its offset from it (0 for
# the user's last in the batch, -1 for the one before...), computed by the caller, which knows the batch (no sort
# or window over the deliveries here).
_INSERT_BATCH = """
WITH n AS (
    INSERT INTO notifications (id, event, payload, webhook_url, expires_at, recipients, era, status_url)
    SELECT id, event, payload, hook, now() + coalesce(ttl::float8, $10::float8) * interval '1 second', cnt,
           notiflow_era(id), status
    FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int[], $6::int[], $11::text[])
        AS t(id, event, payload, hook, ttl, cnt, status)
), bump AS (
    INSERT INTO user_seqs AS s (user_id, last_seq)
    SELECT uid, cnt FROM unnest($13::text[], $14::int[]) AS t(uid, cnt) ORDER BY uid
    ON CONFLICT (user_id) DO UPDATE SET last_seq = s.last_seq + EXCLUDED.last_seq
    RETURNING user_id, last_seq
), outbox AS (
    -- The commit's outbox row (migration 015): every notification of the batch, until all are on the stream.
    INSERT INTO ingest_outbox (id, notification_ids) VALUES ($16::uuid, $1::uuid[])
), ins AS (
    -- receipt: true for the notifications of $12 (those with a status_url, usually none), else NULL (012).
    INSERT INTO deliveries (notification_id, user_id, seq, webhook_status, era, receipt{key_insert})
    SELECT d.nid, d.uid, b.last_seq + d.off, d.hook, notiflow_era(d.nid),
           CASE WHEN d.nid = ANY($12::uuid[]) THEN true END{key_select}
    FROM unnest($7::uuid[], $8::text[], $9::int[], $15::text[]{key_array}) AS d(nid, uid, off, hook{key_column})
    JOIN bump b ON b.user_id = d.uid
)
-- Each user's new counter value (and the commit's timestamp, the notifications' created_at): enough for
-- the caller to know every delivery's seq without reading the rows back.
SELECT user_id, last_seq, now() AS created_at FROM bump
"""
# A batch without collapse keys runs the statement as it was before keys existed (no key array to send, no
# column to fill); one with keys names each delivery's key (NULL for its items without one).
_INSERT_PLAIN = _INSERT_BATCH.format(key_column="", key_array="", key_insert="", key_select="")
_INSERT_KEYED = _INSERT_BATCH.format(
    key_column=", ckey", key_array=", $17::text[]", key_insert=", collapse_key", key_select=", d.ckey"
)


@dataclass(slots=True)
class KeyClaim:
    """Result of claiming idempotency keys: which this batch won, and what the others hold."""

    won: set[ScopedKey]
    existing: dict[ScopedKey, tuple[str, Any]]  # (scope, key) -> (request_hash, stored response)


def scoped_key(item: NewNotification) -> ScopedKey:
    assert item.idempotency_key is not None
    return (item.idempotency_scope, item.idempotency_key)


def accepted_body(item: NewNotification) -> dict[str, Any]:
    """The 202 body; stored with the idempotency key so that a replay answers the same."""
    if item.topic is not None:
        # Its subscribers are counted as the expansion reaches them (GET /notifications/{id} once expanded).
        return {"id": str(item.id), "status": "accepted", "recipients": None, "topic": item.topic}
    return {"id": str(item.id), "status": "accepted", "recipients": len(item.user_ids)}


async def claim_idempotency_keys(conn: Any, items: list[NewNotification], window_s: int) -> KeyClaim:
    """Claim each item's key; a key held by a live (younger than ``window_s``) earlier request is not won."""
    keyed = [i for i in items if i.idempotency_key]
    if not keyed:
        return KeyClaim(set(), {})
    rows = await conn.fetch(
        _CLAIM_KEYS,
        [i.idempotency_scope for i in keyed],
        [i.idempotency_key for i in keyed],
        [i.request_hash for i in keyed],
        [i.id for i in keyed],
        [orjson.dumps(accepted_body(i)).decode() for i in keyed],
        float(window_s),
    )
    won = {(r["scope"], r["key"]) for r in rows}
    lost = [k for k in map(scoped_key, keyed) if k not in won]
    existing: dict[ScopedKey, tuple[str, Any]] = {}
    if lost:
        for r in await conn.fetch(_EXISTING_KEYS, [s for s, _ in lost], [k for _, k in lost], float(window_s)):
            existing[(r["scope"], r["key"])] = (r["request_hash"], orjson.loads(r["response"]))
    return KeyClaim(won, existing)


async def insert_notifications(
    conn: Any, items: list[NewNotification], retention_s: float = 30 * 86400
) -> uuid.UUID | None:
    """Insert the notifications, one delivery per recipient with per-user seqs in batch order, and the batch's
    outbox row; sets each item's ``created_at`` and ``seqs`` as stored and returns the outbox row's id (None for
    no items), for ``clear_outbox`` once every item is on the stream. A notification without a ttl expires
    after ``retention_s``."""
    if not items:
        return None
    outbox_id = new_id()
    count: dict[str, int] = {}
    for item in items:
        for user in item.user_ids:
            count[user] = count.get(user, 0) + 1
    # A delivery's offset below its user's new counter value: the user's deliveries of this batch take
    # last_seq - count + 1 ... last_seq, in batch order.
    left = count.copy()
    nids: list[uuid.UUID] = []
    uids: list[str] = []
    offsets: list[int] = []
    hooks: list[str | None] = []
    keyed = any(i.collapse_key is not None for i in items)
    keys: list[str | None] = []
    for item in items:
        hook = "pending" if item.webhook_url else None
        for user in item.user_ids:
            left[user] -= 1
            nids.append(item.id)
            uids.append(user)
            offsets.append(-left[user])
            hooks.append(hook)
        if keyed:
            keys.extend([item.collapse_key] * len(item.user_ids))
    rows = await conn.fetch(
        _INSERT_KEYED if keyed else _INSERT_PLAIN,
        [i.id for i in items],
        [i.event for i in items],
        [i.payload_json for i in items],
        [i.webhook_url for i in items],
        [i.ttl_seconds for i in items],
        [len(i.user_ids) for i in items],
        nids,
        uids,
        offsets,
        float(retention_s),
        [i.status_url for i in items],
        [i.id for i in items if i.status_url],
        list(count),
        list(count.values()),
        hooks,
        outbox_id,
        *([keys] if keyed else []),
    )
    last = {r["user_id"]: r["last_seq"] for r in rows}
    created_at = rows[0]["created_at"] if rows else None  # no rows: topic items only (no deliveries yet)
    at = 0
    for item in items:
        item.created_at = created_at
        item.seqs = [
            last[user] + off for user, off in zip(item.user_ids, offsets[at : at + len(item.user_ids)], strict=True)
        ]
        at += len(item.user_ids)
    return outbox_id


async def clear_outbox(pool: Any, outbox_ids: list[uuid.UUID]) -> None:
    """Delete the outbox rows of commits whose notifications are all on the stream. Losing this write only
    causes a harmless re-enqueue, so it does not wait for fsync. The ids are our own UUIDs (their text form
    cannot carry SQL), inlined so that the SET LOCAL and the DELETE travel as one simple-protocol message: one
    round trip, one transaction."""
    if not outbox_ids:
        return
    if not all(isinstance(i, uuid.UUID) for i in outbox_ids):
        raise TypeError("clear_outbox takes uuid.UUID ids only (they are inlined into the statement)")
    ids = ",".join([str(i) for i in outbox_ids])
    async with pool.acquire() as conn:
        await conn.execute(
            "SET LOCAL synchronous_commit TO off; "
            f"DELETE FROM ingest_outbox WHERE id = ANY('{{{ids}}}'::uuid[])"
        )
