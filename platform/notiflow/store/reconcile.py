"""SQL of the reconciler: find committed work that Redis does not hold, and housekeeping sweeps."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from notiflow.models import OPEN_STATUSES, WORK_STATUSES, Channel, DeliveryStatus, ReceiptKind, sql_list
from notiflow.store.receipts import outbox_insert

_WORK = sql_list(WORK_STATUSES)
# Socket states that expire with their notification (a dead delivery stays dead).
_EXPIRABLE = sql_list(tuple(s.value for s in OPEN_STATUSES if s is not DeliveryStatus.DEAD))
#: The expiry sweeps (see _EXPIRE): each a cursor and how far behind now it stays, seconds. The second one
#: passes each expired notification once more a minute later, for one whose commit came that late.
EXPIRY_SWEEPS: tuple[tuple[str, int], ...] = (("expiry", 2), ("expiry_late", 60))

# Only one reconciler works at a time; the others skip the round (any number may run safely). The round's
# statements are keyed reads of a few thousand rows at most: JIT is off for its transaction. (Estimates that lag
# behind a burst of inserts put the fresh sweep's page over jit_above_cost: 0.7 s of compiling for 20 ms of
# work, per page, measured with loadtests/fresh_sweep_lag.py.)
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(7349001), set_config('jit', 'off', true)"

# Commits whose notifications were not all XADDed (a crash or a Redis fault between the two): their outbox rows
# (migration 015), oldest first.
_OUTBOX = """
SELECT id, notification_ids FROM ingest_outbox WHERE created_at < now() - $1 * interval '1 second'
ORDER BY created_at LIMIT $2
"""

# A retry's due time for the schedule: its own, or now by PostgreSQL's clock (the one due times are kept in).
_COLUMNS = """d.notification_id, d.user_id, d.status, d.webhook_status,
    coalesce(d.next_attempt_at, now()) AS next_attempt_at, coalesce(d.webhook_next_at, now()) AS webhook_next_at"""

# Every delivery with open work, keyset by key: the rebuild after Redis lost its data (a full scan, once).
_ALL_WORK = f"""
SELECT {_COLUMNS} FROM deliveries d
WHERE (d.status IN {_WORK} OR d.webhook_status IN {_WORK}) AND (d.notification_id, d.user_id) > ($1::uuid, $2::text)
ORDER BY d.notification_id, d.user_id
LIMIT $3
"""

# The open work of the named notifications (the outbox), through the primary key.
_WORK_OF = f"""
SELECT {_COLUMNS} FROM deliveries d
WHERE d.notification_id = ANY($3::uuid[]) AND (d.notification_id, d.user_id) > ($1::uuid, $2::text)
  AND (d.status IN {_WORK} OR d.webhook_status IN {_WORK})
ORDER BY d.notification_id, d.user_id
LIMIT $4
"""

# Stuck work that was put back before: socket work whose due time (retry, re-enqueue, replay) is `stale_s`
# past (deliveries_socket_due), webhook work untouched that long (deliveries_webhook_work).
_STALE_WORK = f"""
SELECT {_COLUMNS} FROM deliveries d
WHERE ((d.next_attempt_at < now() - $3 * interval '1 second' AND d.status IN {_WORK})
       OR (d.webhook_status IN {_WORK} AND d.updated_at < now() - $3 * interval '1 second'))
  AND (d.notification_id, d.user_id) > ($1::uuid, $2::text)
ORDER BY d.notification_id, d.user_id
LIMIT $4
"""

# Fresh work is looked at once, when it becomes stale: the notifications past the `fresh` cursor, in commit
# order (migration 008), up to the first one younger than `stale_s`. One statement per page: it reads the page,
# touches the pending socket deliveries of its notifications (a due time: the stale sweep keeps them in view
# from now on) and returns them to be put back, expires the open deliveries of those already expired (a commit
# later than the expiry sweeps' lags is still seen here), and returns where the cursor goes. Their webhook
# work is the stale sweep's. The page ends below the oldest transaction still running: every transaction
# with a smaller id has ended, so nothing can commit behind the cursor later.
_CURSOR = "SELECT at, id FROM reconciler_cursors WHERE name = $1"
_SET_CURSOR = """
INSERT INTO reconciler_cursors (name, at, id) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET at = EXCLUDED.at, id = EXCLUDED.id
"""
_FRESH_CURSOR = "SELECT txid, id FROM reconciler_cursors WHERE name = 'fresh'"
_SET_FRESH_CURSOR = """
INSERT INTO reconciler_cursors (name, at, txid, id) VALUES ('fresh', now(), $1, $2)
ON CONFLICT (name) DO UPDATE SET at = EXCLUDED.at, txid = EXCLUDED.txid, id = EXCLUDED.id
"""
# Delivery receipts (migration 012): a delivery.expired row per channel that an expiry statement moves to
# expired, for flagged deliveries; `source` holds each locked row's states before the statement (was, hook_was).
_EXPIRY_RECEIPTS = f"""socket_receipts AS (
    {outbox_insert("{source}", Channel.SOCKET, ReceiptKind.EXPIRED, "{expired}was IN " + _EXPIRABLE)}
), webhook_receipts AS (
    {outbox_insert("{source}", Channel.WEBHOOK, ReceiptKind.EXPIRED, "{expired}hook_was IN " + _WORK)}
)"""
_FRESH_PAGE = f"""
WITH page AS (
    SELECT id, txid, created_at, coalesce(expires_at <= now(), false) AS expired FROM notifications
    WHERE (txid, id) > ($1::bigint, $2::uuid) AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
    ORDER BY txid, id
    LIMIT $3
), young AS (
    SELECT txid, id FROM page WHERE created_at > now() - $4 * interval '1 second' ORDER BY txid, id LIMIT 1
), taken AS (
    SELECT p.* FROM page p
    WHERE NOT EXISTS (SELECT 1 FROM young) OR (p.txid, p.id) < (SELECT y.txid, y.id FROM young y)
), locked AS (
    -- One key lookup per notification, in key order (LOCK_IN_KEY_ORDER): never a scan of deliveries, which
    -- statistics that lag behind a burst of inserts can pick for a join.
    SELECT l.*, t.expired FROM (SELECT * FROM taken ORDER BY id) t CROSS JOIN LATERAL (
        SELECT d.notification_id, d.user_id, d.seq, d.receipt, d.status AS was, d.webhook_status AS hook_was
        FROM deliveries d
        WHERE d.notification_id = t.id
          AND ((NOT t.expired AND d.status = '{DeliveryStatus.PENDING.value}')
               OR (t.expired AND (d.status IN {_EXPIRABLE} OR d.webhook_status IN {_WORK})))
        ORDER BY d.user_id FOR UPDATE
    ) l
), changed AS (
    UPDATE deliveries d
    SET status = CASE WHEN l.expired AND d.status IN {_EXPIRABLE} THEN '{DeliveryStatus.EXPIRED.value}'
                      ELSE d.status END,
        webhook_status = CASE WHEN l.expired AND d.webhook_status IN {_WORK} THEN '{DeliveryStatus.EXPIRED.value}'
                              ELSE d.webhook_status END,
        next_attempt_at = CASE WHEN l.expired THEN d.next_attempt_at ELSE now() END,
        updated_at = now()
    FROM locked l WHERE d.notification_id = l.notification_id AND d.user_id = l.user_id
    RETURNING d.notification_id, d.user_id, d.status, d.next_attempt_at, l.expired
), {_EXPIRY_RECEIPTS.format(source="locked", expired="expired AND ")}
SELECT (SELECT count(*) FROM page) AS read, (SELECT count(*) FROM taken) AS taken,
       (SELECT t.txid FROM taken t ORDER BY t.txid DESC, t.id DESC LIMIT 1) AS last_txid,
       (SELECT t.id FROM taken t ORDER BY t.txid DESC, t.id DESC LIMIT 1) AS last_id,
       (SELECT count(*) FROM changed WHERE expired) AS expired,
       array(SELECT c.notification_id FROM changed c WHERE NOT c.expired ORDER BY 1, c.user_id) AS nids,
       array(SELECT c.user_id FROM changed c WHERE NOT c.expired ORDER BY c.notification_id, 1) AS uids,
       array(SELECT c.next_attempt_at FROM changed c WHERE NOT c.expired ORDER BY c.notification_id, c.user_id)
           AS dues
"""
# How far the fresh sweep is behind (benchmarks, operators): notifications past the cursor that are stale
# already, and the age beyond `stale_s` of the oldest of them, seconds.
_FRESH_LAG = """
SELECT count(*) AS behind,
       coalesce(extract(epoch FROM now() - $3 * interval '1 second' - min(created_at)), 0)::float8 AS lag_s
FROM notifications
WHERE (txid, id) > ($1::bigint, $2::uuid) AND created_at <= now() - $3 * interval '1 second'
"""

# Found work gets a new due time (socket) and update time (webhook): the next stale sweep leaves it alone for
# `stale_s`, and takes it again after that if it is still open.
_TOUCH = f"""
WITH locked AS (
    SELECT notification_id, user_id FROM deliveries
    WHERE (notification_id, user_id) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
    ORDER BY notification_id, user_id FOR UPDATE
)
UPDATE deliveries d
SET updated_at = now(), next_attempt_at = CASE WHEN d.status IN {_WORK} THEN now() ELSE d.next_attempt_at END
FROM locked l WHERE d.notification_id = l.notification_id AND d.user_id = l.user_id
"""

# Expiry through the notifications that expired since a sweep's cursor (notifications_expiry), up to its lag
# ago: a notification committed late (its expires_at was fixed when its transaction began) is still ahead of
# the cursor. Fewer rows than the limit: the window is done and the cursor moves to $3.
_EXPIRY_UPPER = "SELECT now() - $1 * interval '1 second'"
_EXPIRE = f"""
WITH due AS (
    SELECT d.notification_id, d.user_id, d.seq, d.receipt, d.status AS was, d.webhook_status AS hook_was
    FROM notifications n JOIN deliveries d ON d.notification_id = n.id
    WHERE n.expires_at IS NOT NULL AND n.expires_at > $2 AND n.expires_at <= $3
      AND (d.status IN {_EXPIRABLE} OR d.webhook_status IN {_WORK})
    ORDER BY d.notification_id, d.user_id
    LIMIT $1
    FOR UPDATE OF d
), changed AS (
UPDATE deliveries d
SET status = CASE WHEN d.status IN {_EXPIRABLE} THEN '{DeliveryStatus.EXPIRED.value}' ELSE d.status END,
    webhook_status = CASE WHEN d.webhook_status IN {_WORK} THEN '{DeliveryStatus.EXPIRED.value}'
                          ELSE d.webhook_status END,
    updated_at = now()
FROM due WHERE d.notification_id = due.notification_id AND d.user_id = due.user_id
RETURNING 1
), {_EXPIRY_RECEIPTS.format(source="due", expired="")}
SELECT count(*) FROM changed
"""

_ZERO_UUID = uuid.UUID(int=0)
_BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


async def try_lock(conn: Any) -> bool:
    return bool(await conn.fetchval(_TRY_LOCK))


async def outbox(conn: Any, grace_s: float, limit: int) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """(outbox row ids, their notifications) of up to ``limit`` commits older than ``grace_s``."""
    rows = await conn.fetch(_OUTBOX, grace_s, limit)
    return [r["id"] for r in rows], [n for r in rows for n in r["notification_ids"]]


async def all_work(conn: Any, *, after: tuple[uuid.UUID, str] | None, limit: int) -> list[dict[str, Any]]:
    nid, uid = after or (_ZERO_UUID, "")
    return [dict(r) for r in await conn.fetch(_ALL_WORK, nid, uid, limit)]


async def work_of(
    conn: Any, notification_ids: list[uuid.UUID], *, after: tuple[uuid.UUID, str] | None, limit: int
) -> list[dict[str, Any]]:
    nid, uid = after or (_ZERO_UUID, "")
    return [dict(r) for r in await conn.fetch(_WORK_OF, nid, uid, notification_ids, limit)]


async def stale_work(
    conn: Any, *, after: tuple[uuid.UUID, str] | None, stale_s: float, limit: int
) -> list[dict[str, Any]]:
    nid, uid = after or (_ZERO_UUID, "")
    return [dict(r) for r in await conn.fetch(_STALE_WORK, nid, uid, stale_s, limit)]


async def cursor(conn: Any, name: str) -> tuple[datetime, uuid.UUID]:
    """Where the sweep ``name`` stands; a cursor nobody set yet (an emptied table) stands at the beginning."""
    row = await conn.fetchrow(_CURSOR, name)
    return (row["at"], row["id"]) if row is not None else (_BEGINNING, _ZERO_UUID)


async def set_cursor(conn: Any, name: str, at: datetime, last_id: uuid.UUID) -> None:
    await conn.execute(_SET_CURSOR, name, at, last_id)


async def fresh_cursor(conn: Any) -> tuple[int, uuid.UUID]:
    """Where the fresh sweep stands: (transaction id, notification id); the beginning when nobody set it."""
    row = await conn.fetchrow(_FRESH_CURSOR)
    return (row["txid"], row["id"]) if row is not None else (0, _ZERO_UUID)


async def set_fresh_cursor(conn: Any, txid: int, last_id: uuid.UUID) -> None:
    await conn.execute(_SET_FRESH_CURSOR, txid, last_id)


@dataclass(slots=True, frozen=True)
class FreshPage:
    """One page of the fresh sweep: the pending socket work it touched (to be put back), how many deliveries
    it expired, how many notifications it read and took, and the cursor after them (None: nothing taken)."""

    rows: list[dict[str, Any]]
    expired: int
    read: int
    taken: int
    following: tuple[int, uuid.UUID] | None


async def fresh_page(conn: Any, after: tuple[int, uuid.UUID], stale_s: float, limit: int) -> FreshPage:
    """The next ``limit`` notifications past ``after`` in commit order, up to the first younger than
    ``stale_s`` (see _FRESH_PAGE): one statement."""
    r = await conn.fetchrow(_FRESH_PAGE, after[0], after[1], limit, stale_s)
    rows = [
        {"notification_id": n, "user_id": u, "status": DeliveryStatus.PENDING.value, "webhook_status": None,
         "next_attempt_at": due, "webhook_next_at": None}
        for n, u, due in zip(r["nids"], r["uids"], r["dues"], strict=True)
    ]
    following = None if r["last_txid"] is None else (int(r["last_txid"]), r["last_id"])
    return FreshPage(rows, int(r["expired"]), int(r["read"]), int(r["taken"]), following)


async def fresh_lag(conn: Any, stale_s: float) -> tuple[int, float]:
    """(notifications the fresh sweep should have passed and has not, seconds the oldest of them waits)."""
    txid, last_id = await fresh_cursor(conn)
    r = await conn.fetchrow(_FRESH_LAG, txid, last_id, stale_s)
    return int(r["behind"]), float(r["lag_s"])


async def touch(conn: Any, keys: list[tuple[uuid.UUID, str]]) -> None:
    if keys:
        await conn.execute(_TOUCH, [k[0] for k in keys], [k[1] for k in keys])


async def expire_due(conn: Any, limit: int) -> int:
    """Expire open deliveries of notifications whose TTL passed since each sweep's last complete round."""
    done = 0
    for name, lag_s in EXPIRY_SWEEPS:
        since, _ = await cursor(conn, name)
        upper = await conn.fetchval(_EXPIRY_UPPER, lag_s)
        if upper <= since:
            continue
        n = int(await conn.fetchval(_EXPIRE, limit, since, upper))
        if n < limit:
            await set_cursor(conn, name, upper, _ZERO_UUID)
        done += n
    return done


def due_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)
