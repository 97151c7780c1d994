"""SQL of collapse keys (migration 011, docs/contract.md "Collapse keys"): a newer delivery replaces its user's
older unacknowledged deliveries with the same key.

Whoever inserts deliveries with keys must call ``apply_collapse`` with the (user, key, seq) of the rows it inserted,
in the same transaction and after the insert statement, once per batch: the ingest commit (store/ingest.py via
service/ingest.py), and any later writer of deliveries (a topic's expansion after the 202).

Why a second statement, not a part of the insert's: a statement sees the rows committed before it began. The
insert locks its users' ``user_seqs`` rows, and may wait there for another batch of the same user to commit; only a
statement that begins after that lock is held sees that batch's deliveries. With the lock held, every lower seq
of those users is committed (or this transaction's own), and no higher one can commit before this transaction:
"newer" is "higher seq", and no replacement is ever missed or done the wrong way round.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from notiflow.models import OPEN_STATUSES, Channel, DeliveryStatus, NewNotification, ReceiptKind, sql_list
from notiflow.store.receipts import outbox_insert

_OPEN = sql_list(OPEN_STATUSES)

# Per (user, key) of the batch: its newest seq and how many deliveries of it the batch inserted (n). Replacement
# keeps one invariant: a user has at most one open delivery per key, its latest (every insert replaces the open ones
# before it). So the open older ones are among the n latest deliveries of (user, key) below the newest (the batch's
# own n - 1 older ones, and the one before the batch): a backward scan of deliveries_collapse (user_id,
# collapse_key, seq) that stops after n rows, however many replaced ones a key has piled up (scanning every older
# row cost a heap fetch per replaced one: loadtests/collapse_lookup.py, 1,000 users with 200 replaced deliveries
# of a key each, 112-192 µs per (user, key) against 52-104 µs, load 12).
# The candidates are then locked in primary-key order, like every multi-row update of deliveries
# (LOCK_IN_KEY_ORDER in store/deliveries.py), and their state checked again under the lock. A replaced delivery
# leaves the socket-due index (next_attempt_at NULL, as an ack does): nothing sweeps it up again.
_REPLACE = f"""
WITH k AS (
    SELECT uid, ckey, max(seq) AS newest, count(*) AS n
    FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(uid, ckey, seq)
    GROUP BY uid, ckey
), cand AS (
    SELECT c.notification_id, c.user_id FROM k CROSS JOIN LATERAL (
        SELECT d.notification_id, d.user_id, d.status FROM deliveries d
        WHERE d.user_id = k.uid AND d.collapse_key = k.ckey AND d.seq < k.newest
        ORDER BY d.seq DESC LIMIT k.n
    ) c
    WHERE c.status IN {_OPEN}
), locked AS (
    -- One key lookup per candidate, in key order (as _RECORD_HANDOFFS): never a scan of deliveries.
    SELECT l.notification_id, l.user_id
    FROM (SELECT DISTINCT notification_id, user_id FROM cand ORDER BY notification_id, user_id) c
    CROSS JOIN LATERAL (
        SELECT d.notification_id, d.user_id FROM deliveries d
        WHERE d.notification_id = c.notification_id AND d.user_id = c.user_id AND d.status IN {_OPEN}
        FOR UPDATE
    ) l
), replaced AS (
    UPDATE deliveries d
    SET status = '{DeliveryStatus.REPLACED.value}', next_attempt_at = NULL, updated_at = now()
    FROM locked l
    WHERE d.notification_id = l.notification_id AND d.user_id = l.user_id AND d.status IN {_OPEN}
    RETURNING d.notification_id, d.user_id, d.seq, d.receipt
), receipts AS (
    {outbox_insert("replaced", Channel.SOCKET, ReceiptKind.REPLACED)}
)
SELECT count(*) FROM replaced
"""

#: (user id, collapse key, seq) of one inserted delivery.
KeyedRow = tuple[str, str, int]


def keyed_rows(items: Iterable[NewNotification]) -> list[KeyedRow]:
    """The inserted deliveries of ``items`` that have a collapse key (their seqs set by the insert)."""
    out: list[KeyedRow] = []
    for item in items:
        if item.collapse_key is None:
            continue
        assert item.seqs is not None, "seqs are known once the insert has run"
        out.extend((user, item.collapse_key, seq) for user, seq in zip(item.user_ids, item.seqs, strict=True))
    return out


async def apply_collapse(conn: Any, rows: list[KeyedRow]) -> int:
    """Replace, for each (user, key) of ``rows``, that user's open deliveries of that key with a lower seq than
    the newest of ``rows``; how many were replaced. One statement for all of ``rows``; call it inside the
    transaction that inserted them, after the insert (see the module's docstring)."""
    if not rows:
        return 0
    return int(await conn.fetchval(_REPLACE, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
