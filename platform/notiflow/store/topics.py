"""SQL of topics (migration 010): subscriptions as intervals of ``topic_clock``, and the expansion of a topic
notification into deliveries, page by page, its progress committed with each page."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from notiflow.models import NewNotification
from notiflow.store import collapse

# A second PUT finds the open interval and changes nothing (the clock value it drew is simply unused). One
# statement per batch of requests (service/topics.py).
_SUBSCRIBE = """
INSERT INTO topic_subscriptions (topic, user_id, since)
SELECT topic, user_id, nextval('topic_clock') FROM unnest($1::text[], $2::text[]) AS t(topic, user_id)
ORDER BY topic, user_id
ON CONFLICT (topic, user_id) WHERE until IS NULL DO NOTHING
"""
_UNSUBSCRIBE = """
UPDATE topic_subscriptions s SET until = nextval('topic_clock'), ended_at = now()
FROM unnest($1::text[], $2::text[]) AS t(topic, user_id)
WHERE s.topic = t.topic AND s.user_id = t.user_id AND s.until IS NULL
"""
_SUBSCRIBERS = """
SELECT user_id FROM topic_subscriptions WHERE topic = $1 AND until IS NULL AND user_id > $2
ORDER BY user_id LIMIT $3
"""
# The cutoff is drawn inside the ingest transaction, after the request arrived and before its 202.
_INSERT_SENDS = """
INSERT INTO topic_sends (notification_id, topic, cutoff, collapse_key)
SELECT nid, topic, nextval('topic_clock'), ckey
FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS t(nid, topic, ckey, ord)
ORDER BY ord
"""

_LOCK_SEND = """
SELECT notification_id, topic, cutoff, expanded_after, routed_after, expanded, done, recipients, collapse_key
FROM topic_sends WHERE notification_id = $1 FOR UPDATE
"""
# Sends of the same topic accepted before this one (smaller cutoff) and not finished: they go first (I4).
_EARLIER_OPEN = "SELECT 1 FROM topic_sends WHERE topic = $1 AND NOT done AND cutoff < $2 LIMIT 1"

_NOTIFICATION = """
SELECT n.event, n.payload::text AS payload, n.created_at, n.expires_at, n.webhook_url, n.status_url, s.collapse_key
FROM notifications n LEFT JOIN topic_sends s ON s.notification_id = n.id WHERE n.id = $1
"""

# One page: the next subscribers at acceptance by user id, each given a delivery numbered from their own counter
# (user_seqs rows locked in user order, as ingest locks them: no deadlock between the two). No delivery of the
# page can exist yet: the progress row is locked, and advanced past the page in this transaction. Should one
# exist all the same, the primary key refuses it and the page's transaction (seqs included) rolls back: nothing
# doubled, no seq skipped. (ON CONFLICT DO NOTHING would skip the row after its seq was taken, a gap; and its
# speculative insertion cost a third of the page's time: 100,000 deliveries in 5.2-6.3 s with it, 3.1-3.9 s
# without, /proc load 10-11.)
_PAGE = """
WITH page AS (
    SELECT s.user_id FROM topic_subscriptions s
    WHERE s.topic = $2 AND s.user_id > $4 AND s.since < $3 AND (s.until IS NULL OR s.until > $3)
    ORDER BY s.user_id LIMIT $5
), bump AS (
    INSERT INTO user_seqs AS s (user_id, last_seq)
    SELECT user_id, 1 FROM page ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET last_seq = s.last_seq + 1
    RETURNING user_id, last_seq
), ins AS (
    -- receipt: true when the notification has a status_url, else NULL (012); the send's collapse key (011).
    INSERT INTO deliveries (notification_id, user_id, seq, webhook_status, era, receipt, collapse_key)
    SELECT $1, user_id, last_seq, $6, notiflow_era($1), $7::boolean, $8::text FROM bump
)
SELECT (SELECT count(*) FROM page) AS read,
       (SELECT p.user_id FROM page p ORDER BY p.user_id DESC LIMIT 1) AS last_user,
       array(SELECT b.user_id FROM bump b ORDER BY b.user_id) AS users,
       array(SELECT b.last_seq FROM bump b ORDER BY b.user_id) AS seqs
"""
_ADVANCE = """
UPDATE topic_sends SET expanded_after = coalesce($2, expanded_after), expanded = $3,
    recipients = recipients + $4, updated_at = now()
WHERE notification_id = $1
"""
# Losing this write only routes a page again (the worker skips what was handed off): it does not wait for fsync
# (set_config(..., true): for this statement's own transaction).
_ROUTED = """
WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true))
UPDATE topic_sends SET routed_after = $2, updated_at = now() FROM lazy WHERE notification_id = $1
"""
# A page committed and not known to be on the stream (a crash or a Redis fault between the two): its open work.
_UNROUTED = """
SELECT user_id FROM deliveries
WHERE notification_id = $1 AND user_id > $2 AND user_id <= $3 AND (status = 'pending' OR webhook_status = 'pending')
ORDER BY user_id
"""
_FINISH = """
WITH s AS (UPDATE topic_sends SET done = true, updated_at = now() WHERE notification_id = $1 RETURNING recipients)
UPDATE notifications SET recipients = (SELECT recipients FROM s) WHERE id = $1
"""

# The reconciler: sends whose expansion has not moved for `stale_s` (its stream entry lost), or of the named
# notifications (the outbox: committed, never put on the stream).
_STALE_SENDS = """
SELECT notification_id, topic FROM topic_sends
WHERE NOT done AND (updated_at < now() - $1 * interval '1 second' OR notification_id = ANY($3::uuid[]))
ORDER BY updated_at LIMIT $2
"""
_TOUCH_SENDS = "UPDATE topic_sends SET updated_at = now() WHERE notification_id = ANY($1::uuid[])"
# Tombstones no unfinished send can need: closed long enough ago that no ingest transaction which drew an earlier
# cutoff can still be open, and below the cutoff of every unfinished send of their topic. Finished sends go too.
_PURGE = """
WITH gone AS (
    DELETE FROM topic_subscriptions s WHERE ctid = ANY(ARRAY(
        SELECT t.ctid FROM topic_subscriptions t
        WHERE t.until IS NOT NULL AND t.ended_at < now() - $1 * interval '1 second'
          AND NOT EXISTS (SELECT 1 FROM topic_sends o WHERE o.topic = t.topic AND NOT o.done AND o.cutoff < t.until)
        LIMIT $2))
    RETURNING 1
), sent AS (
    DELETE FROM topic_sends WHERE notification_id = ANY(ARRAY(
        SELECT notification_id FROM topic_sends WHERE done AND updated_at < now() - $1 * interval '1 second'
        LIMIT $2))
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM sent)
"""


@dataclass(slots=True, frozen=True)
class Send:
    """A topic notification's expansion as committed."""

    notification_id: uuid.UUID
    topic: str
    cutoff: int
    expanded_after: str | None
    routed_after: str | None
    expanded: bool
    done: bool
    collapse_key: str | None = None


@dataclass(slots=True, frozen=True)
class Page:
    """One page's new deliveries (users in id order with their seqs), and where the keyset stands after it."""

    users: list[str]
    seqs: list[int]
    read: int
    last_user: str | None


async def subscribe_pairs(conn: Any, pairs: list[tuple[str, str]]) -> None:
    """Subscribe each (topic, user id); one statement."""
    await conn.execute(_SUBSCRIBE, [t for t, _ in pairs], [u for _, u in pairs])


async def subscribe_many(conn: Any, topic: str, user_ids: list[str]) -> None:
    """Subscribe many users to one topic (the bulk path of loadtests/topic_fanout.py)."""
    await subscribe_pairs(conn, [(topic, u) for u in user_ids])


async def unsubscribe_pairs(conn: Any, pairs: list[tuple[str, str]]) -> None:
    """Close each (topic, user id)'s open subscription, if any; one statement."""
    await conn.execute(_UNSUBSCRIBE, [t for t, _ in pairs], [u for _, u in pairs])


async def subscribers(conn: Any, topic: str, after: str, limit: int) -> list[str]:
    return [r["user_id"] for r in await conn.fetch(_SUBSCRIBERS, topic, after, limit)]


async def insert_sends(conn: Any, items: list[NewNotification]) -> None:
    """The topic items' send rows, in the ingest transaction (their cutoffs in batch order)."""
    topical = [i for i in items if i.topic is not None]
    if topical:
        await conn.execute(
            _INSERT_SENDS, [i.id for i in topical], [i.topic for i in topical], [i.collapse_key for i in topical]
        )


async def lock_send(conn: Any, notification_id: uuid.UUID) -> Send | None:
    r = await conn.fetchrow(_LOCK_SEND, notification_id)
    if r is None:
        return None
    return Send(r["notification_id"], r["topic"], r["cutoff"], r["expanded_after"], r["routed_after"],
                r["expanded"], r["done"], r["collapse_key"])


async def earlier_open(conn: Any, topic: str, cutoff: int) -> bool:
    return bool(await conn.fetchval(_EARLIER_OPEN, topic, cutoff))


async def notification(conn: Any, notification_id: uuid.UUID) -> dict[str, Any] | None:
    r = await conn.fetchrow(_NOTIFICATION, notification_id)
    return None if r is None else dict(r)


async def expand_page(conn: Any, send: Send, limit: int, *, webhook: bool, receipts: bool) -> Page:
    """Insert the next page's deliveries, replace what they replace (a collapse key: store/collapse.py, after the
    insert) and advance the send's progress (one transaction, the caller's)."""
    r = await conn.fetchrow(
        _PAGE, send.notification_id, send.topic, send.cutoff, send.expanded_after or "", limit,
        "pending" if webhook else None, True if receipts else None, send.collapse_key,
    )
    read, users, seqs = int(r["read"]), list(r["users"]), list(r["seqs"])
    if send.collapse_key is not None and users:
        await collapse.apply_collapse(conn, [(u, send.collapse_key, s) for u, s in zip(users, seqs, strict=True)])
    await conn.execute(_ADVANCE, send.notification_id, r["last_user"], read < limit, len(users))
    return Page(users, seqs, read, r["last_user"])


async def unrouted(conn: Any, send: Send) -> list[str]:
    return [r["user_id"] for r in await conn.fetch(
        _UNROUTED, send.notification_id, send.routed_after or "", send.expanded_after or "")]


async def mark_routed(conn: Any, notification_id: uuid.UUID, upto: str | None) -> None:
    await conn.execute(_ROUTED, notification_id, upto)


async def finish(conn: Any, notification_id: uuid.UUID) -> None:
    await conn.execute(_FINISH, notification_id)


async def stale_sends(
    conn: Any, stale_s: float, limit: int, also: list[uuid.UUID] | None = None
) -> list[tuple[uuid.UUID, str]]:
    rows = await conn.fetch(_STALE_SENDS, stale_s, limit, also or [])
    if rows:
        await conn.execute(_TOUCH_SENDS, [r["notification_id"] for r in rows])
    return [(r["notification_id"], r["topic"]) for r in rows]


async def purge(conn: Any, keep_s: float, limit: int) -> int:
    return int(await conn.fetchval(_PURGE, keep_s, limit))
