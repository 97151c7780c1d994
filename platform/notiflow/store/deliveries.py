"""SQL of processing: load a batch of deliveries, record every outcome of the batch at once."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from notiflow.models import Channel, DeliveryStatus, DeliveryWork, Outcome, ReceiptKind, sql_list
from notiflow.store.receipts import outbox_insert

_LOAD_WORK = """
SELECT d.notification_id, d.user_id, d.seq, d.status, d.webhook_status, d.attempts, d.webhook_attempts,
       d.collapse_key, n.event, n.payload::text AS payload, n.created_at, n.webhook_url,
       (n.expires_at IS NOT NULL AND n.expires_at <= now()) AS expired,
       -- A retry that is not due yet came from a duplicate entry (a reclaim after a crash between
       -- recording and acknowledging): it must wait for its scheduled time, not jump the backoff.
       coalesce(d.status = 'retrying' AND d.next_attempt_at > now() + interval '1 second', false) AS socket_not_due,
       -- A pending or retrying webhook whose next time lies ahead is either scheduled later or claimed by a
       -- caller whose outcome is not recorded yet (the claim sets a lease): either way, not this caller's.
       coalesce(d.webhook_status IN ('pending', 'retrying') AND d.webhook_next_at > now() + interval '1 second',
                false) AS webhook_not_due
FROM unnest($1::uuid[], $2::text[]) AS k(nid, uid)
JOIN deliveries d ON d.notification_id = k.nid AND d.user_id = k.uid
JOIN notifications n ON n.id = d.notification_id
"""

# Delivery receipts (migration 012): the terminal states an outcome can reach, per channel, and the kind of
# event each is. A webhook that succeeded is delivered.
_SOCKET_RECEIPTS = "status IN " + sql_list((DeliveryStatus.DEAD.value, DeliveryStatus.EXPIRED.value))
_HOOK_RECEIPTS = "status IN " + sql_list(("succeeded", DeliveryStatus.DEAD.value, DeliveryStatus.EXPIRED.value))
_HOOK_KIND = f"CASE WHEN status = 'succeeded' THEN '{ReceiptKind.DELIVERED.value}' ELSE status END"

# One statement per batch: the state changes of both channels, the attempt rows and the DLQ rows.
# A channel's state only moves forward from a state that still expects work, so a late or
# duplicate outcome can never undo an acknowledgement or resurrect a dead delivery.
_RECORD_OUTCOMES = f"""
WITH o AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::text[],
                         $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::text[])
        AS o(nid, uid, channel, attempt, outcome, status, error, started_at, finished_at, next_at, dlq_reason)
), locked AS (
    -- LOCK_IN_KEY_ORDER: take the row locks in primary-key order before updating, as every
    -- multi-row update of deliveries does; two such statements on overlapping rows cannot deadlock.
    SELECT d.notification_id, d.user_id FROM deliveries d
    WHERE (d.notification_id, d.user_id) IN (SELECT nid, uid FROM o)
    ORDER BY d.notification_id, d.user_id FOR UPDATE
), sock AS (
    UPDATE deliveries d
    SET status = o.status, attempts = greatest(d.attempts, o.attempt), next_attempt_at = o.next_at,
        last_error = coalesce(o.error, d.last_error), updated_at = now()
    FROM o JOIN locked l ON l.notification_id = o.nid AND l.user_id = o.uid
    WHERE o.channel = 'socket' AND d.notification_id = o.nid AND d.user_id = o.uid
      AND d.status IN ('pending', 'retrying')
    RETURNING d.notification_id, d.user_id, d.seq, d.receipt, d.status
), hook AS (
    UPDATE deliveries d
    SET webhook_status = o.status, webhook_attempts = greatest(d.webhook_attempts, o.attempt),
        webhook_next_at = o.next_at, last_error = coalesce(o.error, d.last_error), updated_at = now()
    FROM o JOIN locked l ON l.notification_id = o.nid AND l.user_id = o.uid
    WHERE o.channel = 'webhook' AND d.notification_id = o.nid AND d.user_id = o.uid
      AND d.webhook_status IN ('pending', 'retrying')
    RETURNING d.notification_id, d.user_id, d.seq, d.receipt, d.webhook_status AS status
), sock_receipts AS (
    {outbox_insert("sock", Channel.SOCKET, "status", _SOCKET_RECEIPTS)}
), hook_receipts AS (
    {outbox_insert("hook", Channel.WEBHOOK, _HOOK_KIND, _HOOK_RECEIPTS)}
), att AS (
    INSERT INTO delivery_attempts (notification_id, user_id, channel, attempt, outcome, error, node_id,
                                   started_at, finished_at, era)
    SELECT nid, uid, channel, attempt, outcome, error, $12::text, started_at, finished_at, notiflow_era(nid) FROM o
    RETURNING id
), dead AS (
    -- Only for a delivery whose state this batch moved to dead: one that left the work states meanwhile
    -- (acknowledged, replaced by a newer notification with its collapse key) gets no DLQ row.
    INSERT INTO dlq AS q (notification_id, user_id, channel, reason, last_error, attempts)
    SELECT nid, uid, channel, dlq_reason, error, attempt FROM o
    WHERE dlq_reason IS NOT NULL AND (
        (channel = 'socket' AND (nid, uid) IN (SELECT notification_id, user_id FROM sock))
        OR (channel = 'webhook' AND (nid, uid) IN (SELECT notification_id, user_id FROM hook)))
    ON CONFLICT (notification_id, user_id, channel) DO UPDATE
        SET reason = EXCLUDED.reason, last_error = EXCLUDED.last_error, attempts = EXCLUDED.attempts,
            failed_at = now(), replayed_at = NULL
        WHERE q.replayed_at IS NOT NULL
    RETURNING id
)
SELECT (SELECT count(*) FROM sock) AS socket_rows, (SELECT count(*) FROM hook) AS webhook_rows,
       (SELECT count(*) FROM att) AS attempt_rows, (SELECT count(*) FROM dead) AS dlq_rows
"""

# The socket channel's successful hand-offs, written late and coalesced (service/dispatch_log.py): no
# attempt row (SPEC §4: only failed socket attempts are rows), and only rows still waiting for work move,
# so an acknowledgement that landed first is never undone. Locks in key order, as every multi-row update.
_RECORD_HANDOFFS = """
WITH o AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS o(nid, uid, status) ORDER BY nid, uid
), locked AS (
    -- One key lookup per hand-off, in key order: never a scan of every open delivery (which stale
    -- statistics can pick for an IN list, holding the locks for seconds).
    SELECT l.notification_id, l.user_id, o.status FROM o CROSS JOIN LATERAL (
        SELECT d.notification_id, d.user_id FROM deliveries d
        WHERE d.notification_id = o.nid AND d.user_id = o.uid AND d.status IN ('pending', 'retrying')
        FOR UPDATE
    ) l
)
-- The rows are ours (locked, state checked): the key alone names them.
UPDATE deliveries d SET status = l.status, next_attempt_at = NULL, updated_at = now()
FROM locked l WHERE d.notification_id = l.notification_id AND d.user_id = l.user_id
"""

# Claims the next webhook attempt of each delivery before its call: only a caller that saw the current attempt
# count wins, so two entries for the same delivery (an outbox or stuck-work re-enqueue racing the original, a
# reclaim after a crash) never call the downstream twice for one attempt (SPEC I6: at most MAX_RETRIES + 1).
# Row locks in key order, as everywhere (LOCK_IN_KEY_ORDER); a loser re-reads the row after the winner's commit
# and no longer matches.
_CLAIM_WEBHOOK_ATTEMPTS = """
WITH k AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[]) AS k(nid, uid, seen)
), locked AS (
    SELECT d.notification_id, d.user_id, k.seen FROM deliveries d
    JOIN k ON d.notification_id = k.nid AND d.user_id = k.uid
    WHERE d.webhook_attempts = k.seen AND d.webhook_status IN ('pending', 'retrying')
    ORDER BY d.notification_id, d.user_id FOR UPDATE OF d
)
UPDATE deliveries d
SET webhook_attempts = l.seen + 1, webhook_next_at = now() + $4 * interval '1 second', updated_at = now()
FROM locked l
WHERE d.notification_id = l.notification_id AND d.user_id = l.user_id AND d.webhook_attempts = l.seen
RETURNING d.notification_id, d.user_id
"""

_INSERT_POISON = """
INSERT INTO poison_entries (stream_id, fields, reason) SELECT * FROM unnest($1::text[], $2::jsonb[], $3::text[])
"""


async def load_work(conn: Any, keys: Iterable[tuple[uuid.UUID, str]]) -> dict[tuple[uuid.UUID, str], DeliveryWork]:
    """The named deliveries joined with their notifications; unknown keys are simply absent."""
    pairs = list(dict.fromkeys(keys))
    if not pairs:
        return {}
    rows = await conn.fetch(_LOAD_WORK, [p[0] for p in pairs], [p[1] for p in pairs])
    out: dict[tuple[uuid.UUID, str], DeliveryWork] = {}
    for r in rows:
        work = DeliveryWork(
            notification_id=r["notification_id"],
            user_id=r["user_id"],
            seq=r["seq"],
            status=r["status"],
            webhook_status=r["webhook_status"],
            attempts=r["attempts"],
            webhook_attempts=r["webhook_attempts"],
            event=r["event"],
            payload_json=r["payload"],
            created_at=r["created_at"],
            expired=r["expired"],
            socket_not_due=r["socket_not_due"],
            webhook_not_due=r["webhook_not_due"],
            webhook_url=r["webhook_url"],
            collapse_key=r["collapse_key"],
        )
        out[work.key] = work
    return out


async def record_outcomes(conn: Any, outcomes: list[Outcome], node_id: str) -> dict[str, int]:
    """Record a batch's outcomes in one statement; returns how many rows each part touched."""
    if not outcomes:
        return {"socket_rows": 0, "webhook_rows": 0, "attempt_rows": 0, "dlq_rows": 0}
    row = await conn.fetchrow(
        _RECORD_OUTCOMES,
        [o.notification_id for o in outcomes],
        [o.user_id for o in outcomes],
        [o.channel for o in outcomes],
        [o.attempt for o in outcomes],
        [o.outcome for o in outcomes],
        [o.status for o in outcomes],
        [o.error for o in outcomes],
        [o.started_at for o in outcomes],
        [o.finished_at for o in outcomes],
        [o.next_attempt_at for o in outcomes],
        [o.dlq_reason for o in outcomes],
        node_id,
    )
    return dict(row)


async def record_handoffs(conn: Any, handoffs: list[tuple[uuid.UUID | str, str, str]]) -> None:
    """(notification id (a UUID or its text), user id, dispatched | offline) of socket deliveries handed off."""
    if handoffs:
        await conn.execute(
            _RECORD_HANDOFFS, [h[0] for h in handoffs], [h[1] for h in handoffs], [h[2] for h in handoffs]
        )


async def claim_webhook_attempts(
    conn: Any, claims: list[tuple[uuid.UUID, str, int]], lease_s: float
) -> set[tuple[uuid.UUID, str]]:
    """Claim the next attempt of each (notification, user, attempts seen); the keys this caller won. The
    claim holds the delivery for ``lease_s``: an entry loaded meanwhile finds it not due, rather than seeing
    the claimed count and claiming the attempt after it before this one's outcome is recorded."""
    if not claims:
        return set()
    rows = await conn.fetch(
        _CLAIM_WEBHOOK_ATTEMPTS, [c[0] for c in claims], [c[1] for c in claims], [c[2] for c in claims], lease_s
    )
    return {(r["notification_id"], r["user_id"]) for r in rows}


async def record_poison(conn: Any, entries: list[tuple[str, str, str]]) -> None:
    """Park unparseable stream entries: (stream id, fields as JSON, reason)."""
    if entries:
        await conn.execute(
            _INSERT_POISON, [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]
        )


async def server_time_ms(conn: Any) -> int:
    """PostgreSQL's wall clock now (not the transaction's start), milliseconds since the Unix epoch."""
    return int(await conn.fetchval("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"))
