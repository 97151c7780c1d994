"""The statements of ``narrow_trial.py``: the narrow entry per recipient and the ways of recording acks it tries
(issue 19). A trial's SQL, not the store's: nothing here runs in the platform."""

from __future__ import annotations

import re


def entry_table(name: str, *, key: str = "", index: str = "(user_id, seq)", brin: bool = False) -> str:
    """A narrow entry table: insert-only, fillfactor 100, partitioned by id as ``deliveries`` (one partition)."""
    return f"""
CREATE TABLE {name} (notification_id uuid NOT NULL, user_id text NOT NULL, seq bigint NOT NULL{key})
    PARTITION BY RANGE (notification_id);
CREATE TABLE {name}_all PARTITION OF {name} FOR VALUES FROM (MINVALUE) TO (MAXVALUE) WITH (fillfactor = 100);
CREATE INDEX ON {name} {index};""" + (f"\nCREATE INDEX ON {name} USING brin (notification_id);" if brin else "")


SCHEMA = "".join((
    entry_table("entries"),
    entry_table("entries_keyed", key=", PRIMARY KEY (notification_id, user_id)"),
    entry_table("entries_byid", index="(user_id, seq) INCLUDE (notification_id)", brin=True),
    entry_table("entries_holes"),
    """
CREATE TABLE ack_cursors (user_id text PRIMARY KEY, upto bigint NOT NULL) WITH (fillfactor = 50);
CREATE TABLE acks_apart (user_id text NOT NULL, seq bigint NOT NULL, PRIMARY KEY (user_id, seq));
CREATE TABLE ack_holes (user_id text NOT NULL, seq bigint NOT NULL, PRIMARY KEY (user_id, seq));
CREATE TABLE holes_cursors (user_id text PRIMARY KEY, upto bigint NOT NULL) WITH (fillfactor = 50);
""",
))

# The store's statement, its deliveries insert replaced (the other parameters stay typed by a CTE nobody reads).
ENTRIES = """ins AS (
    INSERT INTO {table} (notification_id, user_id, seq)
    SELECT d.nid, d.uid, b.last_seq + d.off
    FROM unnest($7::uuid[], $8::text[], $9::int[]) AS d(nid, uid, off)
    JOIN bump b ON b.user_id = d.uid
), typed AS (SELECT $12::uuid[], $15::text[])
"""
INS = re.compile(r"ins AS \(\n.*?\n\)\n", re.S)

# The cursors (in the table ``cursors``) of the users whose acks move them (c.moves) go to their highest acked
# seq (greatest: never back).
MOVE_CURSOR = """moved AS (
    INSERT INTO {cursors} AS k (user_id, upto)
    SELECT uid, hi FROM c WHERE moves ORDER BY uid
    ON CONFLICT (user_id) DO UPDATE SET upto = greatest(k.upto, EXCLUDED.upto)
    RETURNING 1
)"""
# A user's acked seqs of one statement continue the cursor when the lowest is at most one past it and they
# have no hole; those move it (greatest: never back), the others are kept apart.
ACK_CURSOR = """
WITH p AS (SELECT DISTINCT uid, seq FROM unnest($1::text[], $2::bigint[]) AS p(uid, seq)),
g AS (SELECT uid, min(seq) AS lo, max(seq) AS hi, count(*) AS n FROM p GROUP BY uid),
c AS (SELECT g.*, (g.lo <= coalesce(k.upto, 0) + 1 AND g.hi - g.lo + 1 = g.n) AS moves
      FROM g LEFT JOIN ack_cursors k ON k.user_id = g.uid),
""" + MOVE_CURSOR.format(cursors="ack_cursors") + """, apart AS (
    INSERT INTO acks_apart (user_id, seq)
    SELECT p.uid, p.seq FROM p JOIN c USING (uid) WHERE NOT c.moves ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM apart)
"""
# The same with one probe of the cursor per user instead of two: an UPDATE of the cursors the acks continue,
# an insert for users acking their first seqs, and the rest kept apart (``narrow-upd``).
ACK_UPDATE = """
WITH p AS (SELECT DISTINCT uid, seq FROM unnest($1::text[], $2::bigint[]) AS p(uid, seq)),
g AS (SELECT uid, min(seq) AS lo, max(seq) AS hi, count(*) AS n FROM p GROUP BY uid),
moved AS (
    UPDATE ack_cursors k SET upto = g.hi FROM g
    WHERE k.user_id = g.uid AND g.lo <= k.upto + 1 AND g.hi - g.lo + 1 = g.n AND g.hi > k.upto
    RETURNING k.user_id
), firsts AS (
    INSERT INTO ack_cursors (user_id, upto)
    SELECT uid, hi FROM g WHERE lo = 1 AND hi = n AND uid NOT IN (SELECT user_id FROM moved) ORDER BY uid
    ON CONFLICT DO NOTHING
    RETURNING user_id
), apart AS (
    INSERT INTO acks_apart (user_id, seq)
    SELECT uid, seq FROM p
    WHERE uid NOT IN (SELECT user_id FROM moved) AND uid NOT IN (SELECT user_id FROM firsts) ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM firsts) + (SELECT count(*) FROM apart)
"""
# The offline queue as the narrow record would read it: past the cursor, without the seqs kept apart.
OFFLINE_NARROW = """
SELECT e.notification_id AS id, e.seq, n.event, n.payload::text AS payload, n.created_at
FROM {table} e JOIN notifications n ON n.id = e.notification_id
WHERE e.user_id = $1 AND e.seq > greatest($2, coalesce((SELECT upto FROM ack_cursors WHERE user_id = $1), 0))
  AND NOT EXISTS (SELECT 1 FROM acks_apart a WHERE a.user_id = $1 AND a.seq = e.seq)
  AND n.expires_at > now()
ORDER BY e.seq LIMIT $3
"""
# Acks naming ids, as clients send them (no seq from the gateway): each user's ids found in its entries past
# its cursor (the (user_id, seq) index, stopping once all are found), then moved as ``ACK_CURSOR`` does.
ACK_BY_ID = """
WITH q AS (SELECT uid, array_agg(DISTINCT nid) AS ids FROM unnest($1::text[], $2::uuid[]) AS q(uid, nid) GROUP BY uid),
f AS (
    SELECT q.uid, coalesce(k.upto, 0) AS upto, s.seqs FROM q LEFT JOIN ack_cursors k ON k.user_id = q.uid
    CROSS JOIN LATERAL (
        SELECT array_agg(e.seq ORDER BY e.seq) AS seqs FROM (
            SELECT e.seq FROM entries_byid e
            WHERE e.user_id = q.uid AND e.seq > coalesce(k.upto, 0) AND e.notification_id = ANY(q.ids)
            ORDER BY e.seq LIMIT cardinality(q.ids)) e
    ) s
    WHERE s.seqs IS NOT NULL
),
c AS (SELECT uid, seqs, seqs[cardinality(seqs)] AS hi,
             (seqs[1] <= upto + 1 AND seqs[cardinality(seqs)] - seqs[1] + 1 = cardinality(seqs)) AS moves FROM f),
""" + MOVE_CURSOR.format(cursors="ack_cursors") + """, apart AS (
    INSERT INTO acks_apart (user_id, seq)
    SELECT uid, unnest(seqs) FROM c WHERE NOT moves ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM apart)
"""

# ``holes``: the cursor is a user's highest acked seq, and the seqs below it not acked are holes, listed apart.
# Acks in order move the cursor and make no hole; a skipped seq becomes one hole row, gone once acknowledged.
# (A real record would lock the cursor row first: a hole computed from a stale cursor could list an acked seq.)
ACK_HOLES = """
WITH p AS (SELECT DISTINCT uid, seq FROM unnest($1::text[], $2::bigint[]) AS p(uid, seq)),
g AS (SELECT uid, max(seq) AS hi, array_agg(seq) AS seqs FROM p GROUP BY uid),
c AS (SELECT g.*, coalesce(k.upto, 0) AS upto, g.hi > coalesce(k.upto, 0) AS moves
      FROM g LEFT JOIN holes_cursors k ON k.user_id = g.uid),
""" + MOVE_CURSOR.format(cursors="holes_cursors") + """, opened AS (
    INSERT INTO ack_holes (user_id, seq)
    SELECT c.uid, s FROM c CROSS JOIN LATERAL generate_series(c.upto + 1, c.hi - 1) AS s
    WHERE c.hi > c.upto + 1 AND s <> ALL (c.seqs) ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING 1
), filled AS (
    DELETE FROM ack_holes h USING p JOIN c USING (uid)
    WHERE h.user_id = p.uid AND h.seq = p.seq AND p.seq <= c.upto
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM opened) + (SELECT count(*) FROM filled)
"""
# Its offline queue: the holes past after_seq, then the entries past the cursor.
OFFLINE_HOLES = """
SELECT x.id, x.seq, n.event, n.payload::text AS payload, n.created_at FROM (
    (SELECT e.notification_id AS id, e.seq FROM ack_holes h
     JOIN {table} e ON e.user_id = h.user_id AND e.seq = h.seq
     WHERE h.user_id = $1 AND h.seq > $2 ORDER BY h.seq LIMIT $3)
    UNION ALL
    (SELECT e.notification_id, e.seq FROM {table} e
     WHERE e.user_id = $1 AND e.seq > greatest($2, coalesce((SELECT upto FROM holes_cursors WHERE user_id = $1), 0))
     ORDER BY e.seq LIMIT $3)
) x JOIN notifications n ON n.id = x.id
WHERE n.expires_at > now()
ORDER BY x.seq LIMIT $3
"""
#: kind -> (entry table, ack statement, offline page); ``today`` is the store's own record.
NARROW = {
    "narrow": ("entries", ACK_CURSOR, OFFLINE_NARROW), "keyed": ("entries_keyed", ACK_CURSOR, OFFLINE_NARROW),
    "narrow-upd": ("entries", ACK_UPDATE, OFFLINE_NARROW), "byid": ("entries_byid", ACK_BY_ID, OFFLINE_NARROW),
    "holes": ("entries_holes", ACK_HOLES, OFFLINE_HOLES),
}
