"""SQL behind the read and acknowledge endpoints: a notification, a user's offline queue, acks."""

from __future__ import annotations

import uuid
from typing import Any

from notiflow.models import OPEN_STATUSES, USER_SEP, Channel, ReceiptKind, sql_list
from notiflow.store.receipts import outbox_insert

_OPEN = sql_list(OPEN_STATUSES)

_NOTIFICATION = "SELECT id, event, payload::text AS payload, created_at, recipients FROM notifications WHERE id = $1"
_STATUS_COUNTS = "SELECT status, count(*) AS n FROM deliveries WHERE notification_id = $1 GROUP BY status"
_DELIVERIES = """
SELECT user_id, seq, status, webhook_status, delivered_at FROM deliveries
WHERE notification_id = $1 AND ($2::text IS NULL OR user_id = $2) ORDER BY seq, user_id LIMIT $3
"""
_ATTEMPTS = """
SELECT user_id, channel, attempt, outcome, error, node_id, started_at, finished_at FROM delivery_attempts
WHERE notification_id = $1 AND user_id = ANY($2::text[]) ORDER BY id
"""

# Through deliveries_user_seq, the state filtered on the row (no index follows it, migration 006).
# Expired notifications leave the queue at once, before the sweeper marks them.
_OFFLINE = f"""
SELECT d.notification_id AS id, d.seq, n.event, d.collapse_key, n.payload::text AS payload, n.created_at
FROM deliveries d JOIN notifications n ON n.id = d.notification_id
WHERE d.user_id = $1 AND d.seq > $2 AND d.status IN {_OPEN}
  AND (n.expires_at IS NULL OR n.expires_at > now())
ORDER BY d.seq LIMIT $3
"""

# An ack changes no indexed column of a delivery that was never put back (its due time is NULL already): the
# update is HOT (migration 006). One that was put back leaves the stale sweep's index with its due time.
# Every statement that updates several deliveries first locks them in primary-key order (see
# LOCK_IN_KEY_ORDER in store/deliveries.py): acks racing the stream worker's outcome writes on the same
# rows then queue behind each other instead of deadlocking.
_ACK = f"""
WITH locked AS (
    SELECT notification_id, user_id FROM deliveries d
    WHERE {{where}} AND d.status IN {_OPEN}
    ORDER BY notification_id, user_id FOR UPDATE
)
UPDATE deliveries d SET status = 'delivered', delivered_at = now(), updated_at = now(), next_attempt_at = NULL
FROM locked l
WHERE d.notification_id = l.notification_id AND d.user_id = l.user_id AND d.status IN {_OPEN}
"""
# Delivery receipts (migration 012): the ack as a CTE that returns what the outbox insert reads; its flagged
# rows (receipt IS true) get a delivery.delivered row in the same statement. The statement's value: rows acked.
_RECEIPTS = f"""
    RETURNING d.notification_id, d.user_id, d.seq, d.receipt
), receipts AS (
    {outbox_insert("acked", Channel.SOCKET, ReceiptKind.DELIVERED)}
)
SELECT count(*) FROM acked
"""


def _with_receipts(ack: str) -> str:
    """``WITH ... UPDATE ...`` as ``WITH ..., acked AS (UPDATE ... RETURNING ...), receipts AS (INSERT ...)``."""
    head, update = ack.rsplit("\nUPDATE deliveries d ", 1)
    return f"{head}, acked AS (\nUPDATE deliveries d {update.rstrip()}{_RECEIPTS}"


_ACK_IDS_WHERE = "d.user_id = $1 AND d.notification_id = ANY($2::uuid[])"
_ACK_IDS_UPDATE = _ACK.format(where=_ACK_IDS_WHERE)


# Plan cost (issue 19, docs/record.md "What a statement costs as partitions accumulate"): an UPDATE that finds its
# rows by joining the locked ones prunes no partition while planning, so each (custom) plan of the ack by ids
# planned every day partition: 2 ms of CPU at 35 partitions. Gated, the UPDATE finds them by the lock step's own
# predicate (pruned to the ids' days at planning) once every lock is taken: the gate is a one-time filter, run
# before any row is read. The rows are the same (those it did not lock are not open: the status is rechecked).
def _gated(ack: str, where: str) -> str:
    join = "FROM locked l\nWHERE d.notification_id = l.notification_id AND d.user_id = l.user_id"
    assert ack.count(join) == 1
    return ack.replace(join, f"WHERE EXISTS (SELECT FROM locked) AND {where}")


_ACK_IDS = _with_receipts(_gated(_ACK_IDS_UPDATE, _ACK_IDS_WHERE))
_ACK_UP_TO = _with_receipts(_ACK.format(where="d.user_id = $1 AND d.seq <= $2"))
# Socket acks, many users at once, the pairs passed as two joined texts (asyncpg encodes a text[] element by
# element, 0.7 us per pair against 0.2): one key lookup per pair in key order (a plan that scans every open
# delivery, as stale statistics can pick for the IN form, holds the locks for seconds).
_ACK_PAIRS_UPDATE = f"""
WITH p AS (
    SELECT DISTINCT nid, uid
    FROM unnest(string_to_array($2, ',')::uuid[], string_to_array($1, chr({ord(USER_SEP)}))) AS p(nid, uid)
    ORDER BY nid, uid
), locked AS (
    SELECT l.notification_id, l.user_id FROM p CROSS JOIN LATERAL (
        SELECT d.notification_id, d.user_id FROM deliveries d
        WHERE d.notification_id = p.nid AND d.user_id = p.uid AND d.status IN {_OPEN}
        FOR UPDATE
    ) l
)
UPDATE deliveries d SET status = 'delivered', delivered_at = now(), updated_at = now(), next_attempt_at = NULL
FROM locked l WHERE d.notification_id = l.notification_id AND d.user_id = l.user_id
"""
# Before migration 014 (kept as the baseline of loadtests/plan_cost.py and receipts_ack_ab.py, not run here).
_ACK_PAIRS = _with_receipts(_ACK_PAIRS_UPDATE)
# What ack_pairs runs: migration 014's function, whose UPDATE walks the pairs in key order itself (no lock step:
# 8.4 -> 5.8 us per fan-out socket ack, loadtests/pg_floor.py; docs/record.md).
_ACK_PAIRS_CALL = "SELECT notiflow_ack_pairs($1, $2, $3)"

# For a gateway resynchronising its sockets after its Pub/Sub subscription was lost: per user, the next page of
# open deliveries past that user's cursor (keyset by seq, one index range per user on deliveries_user_seq).
_OPEN_FOR_USERS = f"""
SELECT u.uid AS user_id, x.id, x.seq, x.event, x.collapse_key, x.payload, x.created_at
FROM unnest($1::text[], $2::bigint[]) AS u(uid, after_seq)
CROSS JOIN LATERAL (
    SELECT d.notification_id AS id, d.seq, n.event, d.collapse_key, n.payload::text AS payload, n.created_at
    FROM deliveries d JOIN notifications n ON n.id = d.notification_id
    WHERE d.user_id = u.uid AND d.seq > u.after_seq AND d.status IN {_OPEN}
      AND (n.expires_at IS NULL OR n.expires_at > now())
    ORDER BY d.seq LIMIT $3
) AS x
ORDER BY u.uid, x.seq
"""


async def get_notification(conn: Any, nid: uuid.UUID, user_id: str | None, limit: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(_NOTIFICATION, nid)
    if row is None:
        return None
    counts = {r["status"]: r["n"] for r in await conn.fetch(_STATUS_COUNTS, nid)}
    deliveries = [dict(r) for r in await conn.fetch(_DELIVERIES, nid, user_id, limit)]
    attempts: dict[str, list[dict[str, Any]]] = {}
    for a in await conn.fetch(_ATTEMPTS, nid, [d["user_id"] for d in deliveries]):
        item = dict(a)
        attempts.setdefault(item.pop("user_id"), []).append(item)
    for d in deliveries:
        d["attempts"] = attempts.get(d["user_id"], [])
    return {**dict(row), "status_counts": counts, "deliveries": deliveries}


async def offline_page(conn: Any, user_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_OFFLINE, user_id, after_seq, limit)]


async def ack_ids(conn: Any, user_id: str, ids: list[uuid.UUID]) -> int:
    return int(await conn.fetchval(_ACK_IDS, user_id, ids))


async def ack_up_to(conn: Any, user_id: str, up_to_seq: int) -> int:
    return int(await conn.fetchval(_ACK_UP_TO, user_id, up_to_seq))


async def ack_pairs(conn: Any, pairs: list[tuple[str, str]]) -> int:
    """Acknowledge many users' deliveries in one statement (socket acks, batched across sockets): pairs of
    (user id, notification id as UUID text; PostgreSQL casts it, and one bad id fails the statement)."""
    if not pairs:
        return 0
    users = USER_SEP.join([p[0] for p in pairs])
    return int(await conn.fetchval(_ACK_PAIRS_CALL, users, ",".join([p[1] for p in pairs]), USER_SEP))


async def open_for_users(conn: Any, after_seq: dict[str, int], per_user: int) -> list[dict[str, Any]]:
    """Per user of ``after_seq``, at most ``per_user`` open deliveries with a seq past that user's cursor,
    oldest first; ordered by user, then seq."""
    users = list(after_seq)
    return [dict(r) for r in await conn.fetch(_OPEN_FOR_USERS, users, [after_seq[u] for u in users], per_user)]


_LAST_SEQ = "SELECT last_seq FROM user_seqs WHERE user_id = $1"


async def last_seq(conn: Any, user_id: str) -> int:
    """The highest seq given to ``user_id`` so far (committed); 0 for a user never sent anything."""
    value = await conn.fetchval(_LAST_SEQ, user_id)
    return int(value or 0)
