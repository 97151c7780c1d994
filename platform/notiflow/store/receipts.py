"""SQL of delivery receipts (migration 012): the outbox rows the terminal-state statements write, and the
sender's page, deletion and rescheduling.

Each statement that moves a delivery to a terminal state (acks in store/queries.py, outcomes in
store/deliveries.py, expiry in store/reconcile.py) ends with a CTE built by ``outbox_insert``: one row per
delivery whose ``receipt`` flag is set, in the same statement (so the same transaction) as the state change.
Deliveries without the flag write nothing; the CTE reads only what the UPDATE returns.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from notiflow.models import Channel, ReceiptKind


def outbox_insert(source: str, channel: Channel | str, kind: ReceiptKind | str, where: str = "true") -> str:
    """``INSERT ... SELECT`` of receipt rows from ``source`` (a CTE with notification_id, user_id, seq, receipt),
    for its flagged rows that match ``where``. ``channel`` and ``kind`` are enum members (inlined as literals)
    or SQL expressions over ``source``'s columns."""
    ch = f"'{channel.value}'" if isinstance(channel, Channel) else channel
    kd = f"'{kind.value}'" if isinstance(kind, ReceiptKind) else kind
    return (
        "INSERT INTO receipt_outbox (notification_id, user_id, seq, channel, kind) "
        f"SELECT notification_id, user_id, seq, {ch}, {kd} FROM {source} WHERE receipt AND ({where})"
    )


# The next page of due events, leased for `lease_s` (another sender skips them meanwhile; one that died frees
# them when the lease ends), with the URL their notification names (NULL once retention removed it).
_CLAIM = """
WITH due AS (
    SELECT id FROM receipt_outbox WHERE next_at <= now() ORDER BY next_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE receipt_outbox o SET next_at = now() + $2 * interval '1 second'
FROM due WHERE o.id = due.id
RETURNING o.id, o.notification_id, o.user_id, o.seq, o.channel, o.kind, o.at, o.attempts,
          (SELECT n.status_url FROM notifications n WHERE n.id = o.notification_id) AS status_url
"""
_DELETE = "DELETE FROM receipt_outbox WHERE id = ANY($1::bigint[])"
# `used` is 1 for a failed attempt, 0 for one held back by the per-host budget (no attempt was made).
_RESCHEDULE = """
UPDATE receipt_outbox o
SET attempts = o.attempts + r.used, next_at = now() + r.delay_ms * interval '1 millisecond',
    last_error = coalesce(r.error, o.last_error)
FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::text[]) AS r(id, used, delay_ms, error)
WHERE o.id = r.id
"""


@dataclass(slots=True, frozen=True)
class Receipt:
    """One outbox row, as the sender posts it."""

    id: int
    notification_id: uuid.UUID
    user_id: str
    seq: int
    channel: Channel
    kind: ReceiptKind
    at: datetime
    attempts: int
    status_url: str | None

    def event(self) -> dict[str, Any]:
        """The event's JSON object (docs/contract.md, "Delivery receipts")."""
        return {
            "id": f"rcpt_{self.id}",
            "type": self.kind.event_type,
            "timestamp": self.at,
            "data": {
                "notification_id": str(self.notification_id), "user_id": self.user_id, "seq": self.seq,
                "channel": self.channel.value, "status": self.kind.value,
            },
        }


async def claim(conn: Any, limit: int, lease_s: float) -> list[Receipt]:
    rows = await conn.fetch(_CLAIM, limit, lease_s)
    return [
        Receipt(r["id"], r["notification_id"], r["user_id"], r["seq"], Channel(r["channel"]),
                ReceiptKind(r["kind"]), r["at"], r["attempts"], r["status_url"])
        for r in rows
    ]


async def delete(conn: Any, ids: list[int]) -> None:
    """Sent (a 2xx answered) or given up: the rows go."""
    if ids:
        await conn.execute(_DELETE, ids)


async def reschedule(conn: Any, later: list[tuple[int, bool, int, str | None]]) -> None:
    """(id, whether an attempt was used, delay in ms, error) of events to send again later."""
    if later:
        await conn.execute(
            _RESCHEDULE, [x[0] for x in later], [int(x[1]) for x in later], [x[2] for x in later],
            [x[3] for x in later],
        )
