"""How the replace statement finds a user's older deliveries of a key (store/collapse.py), three ways, on a history
where every user has ``--history`` deliveries of one key, all but the latest replaced (a badge updated that often):

- every older one through deliveries_collapse (user_id, collapse_key, seq): a heap fetch per replaced row;
- the ``n`` latest older ones through the same index (what store/collapse.py does): bounded by the batch;
- the key kept on the notification instead (an index on notifications.ckey) and joined to deliveries: every
  notification that ever had the key, per user.

Wall time of a lookup of ``--users`` (user, key) pairs, best of 5; a figure, not a test.

    NOTIFLOW_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python loadtests/collapse_lookup.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import asyncpg
from stores import fresh_database

from notiflow.ids import new_id

_OPEN = "('pending', 'dispatched', 'offline', 'retrying', 'dead')"
_K = "unnest($1::text[], $2::text[], $3::bigint[]) AS k(uid, ckey, newest)"
WAYS = {
    "every older, deliveries_collapse": f"""
        SELECT count(*) FROM {_K} JOIN deliveries d
        ON d.user_id = k.uid AND d.collapse_key = k.ckey AND d.seq < k.newest WHERE d.status IN {_OPEN}""",
    "n latest older, deliveries_collapse": f"""
        SELECT count(*) FROM {_K} CROSS JOIN LATERAL (SELECT d.status FROM deliveries d
            WHERE d.user_id = k.uid AND d.collapse_key = k.ckey AND d.seq < k.newest ORDER BY d.seq DESC LIMIT 1) o
        WHERE o.status IN {_OPEN}""",
    "key on the notification, joined": f"""
        SELECT count(*) FROM {_K} JOIN notifications n ON n.ckey = k.ckey
        JOIN deliveries d ON d.notification_id = n.id AND d.user_id = k.uid AND d.seq < k.newest
        WHERE d.status IN {_OPEN}""",
}


async def run(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    await conn.execute("ALTER TABLE notifications ADD COLUMN ckey text")
    await conn.execute("CREATE INDEX notifications_ckey ON notifications (ckey) WHERE ckey IS NOT NULL")
    users = [f"u{i}" for i in range(args.users)]
    for seq in range(1, args.history + 1):
        nid = new_id()
        await conn.execute(
            "INSERT INTO notifications (id, event, payload, expires_at, recipients, era, ckey) "
            "VALUES ($1, 'e', '{}', now() + interval '1 day', $2, notiflow_era($1), 'badge')", nid, len(users))
        await conn.execute(
            "INSERT INTO deliveries (notification_id, user_id, seq, era, collapse_key, status) "
            "SELECT $1, u, $2::bigint, notiflow_era($1), 'badge', CASE WHEN $2::bigint < $3 THEN 'replaced' "
            "ELSE 'offline' END FROM unnest($4::text[]) u", nid, seq, args.history, users)
    await conn.execute("ANALYZE")
    keys = (users, ["badge"] * len(users), [args.history + 1] * len(users))
    for name, sql in WAYS.items():
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            found = await conn.fetchval(sql, *keys)
            best = min(best, time.perf_counter() - t)
        print(f"{name:<38} {best / len(users) * 1e6:8.1f} µs per (user, key)  ({found} open found,"
              f" load {os.getloadavg()[0]:.1f})")


async def main(args: argparse.Namespace) -> None:
    async with fresh_database("collapselookup") as db:
        await run(db.conn, args)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--history", type=int, default=200, help="deliveries of the key per user")
    asyncio.run(main(p.parse_args()))
