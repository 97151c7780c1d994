"""Trial for issue 19, before building: the record as a narrow, insert-only entry per recipient and acks as a
per-user cursor. What would an acknowledged delivery cost PostgreSQL then, against today's record?

On one fresh database (the server of ``NOTIFLOW_DATABASE_URL``, on this machine: backend CPU is read from
/proc as ``pg_floor.py`` does), migrated to head, with version 7 ids, in alternating rounds (``--kinds``), each
kind with users of its own:

- ``today``: the store's ingest statement (``store.ingest.insert_notifications``) and socket ack
  (``store.queries.ack_pairs``: pairs of (user, id), ``--ack-batch`` per statement), as ``pg_floor.py``;
- ``narrow``: the same ingest statement with its deliveries insert replaced by a narrow entry
  ``(notification_id, user_id, seq)``: fillfactor 100, one index ``(user_id, seq)``, never updated, in a
  table partitioned by id like ``deliveries``. Acks name (user, seq), which the gateway knows of every frame it
  pushed (the frame carries its seq); one statement moves each user's cursor over the acked seqs that continue
  it (``ack_cursors``, fillfactor 50: HOT updates), or keeps the others apart (``acks_apart``);
- ``keyed``: ``narrow`` with today's primary key (notification_id, user_id) on the entry as well;
- ``byid``: ``narrow`` whose acks name ids, as clients send them: each user's ids are found in its entries past
  its cursor (``(user_id, seq) INCLUDE (notification_id)``; a BRIN on the id stands for the lookups by id);
- ``narrow-upd``: ``narrow`` with the cursor moved by an UPDATE (one probe per user instead of two);
- ``holes``: the cursor is the highest acked seq and the unacknowledged seqs below it are kept as holes (listed
  with the entries past the cursor): acks in order make no row, a seq left unacknowledged makes one.

Not done by any narrow kind: folding ``acks_apart`` into the cursor once a gap is acknowledged or expires, and
the sparse states (hand-offs, retries, webhooks) a real record would keep beside the entries.

The acks come in the order the frames went out (notification by notification, every recipient of one before
the next: one seq per user per statement) or, with ``--per-user K``, K consecutive seqs of each user together
(what the gateway's ack gathering gives a user who received K notifications within ``WS_ACK_GATHER_MS``).
``--skip-every N`` leaves every N-th delivery unacknowledged: every later ack of that user is out of order.

    NOTIFLOW_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python loadtests/narrow_trial.py
    NOTIFLOW_DATABASE_URL=... python loadtests/narrow_trial.py --per-user 5 --repeat 3

A figure, not a test; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import narrow_sql
import pg_floor
from backend_cpu import Meter
from stores import fresh_database

from notiflow.store import queries as queries_sql

READ_PASSES = 5  # each reader's page is read this many times: enough reads for the CPU clock's 10 ms ticks


class NarrowConnection:
    """The measured connection, with the ingest statement's deliveries insert replaced by ``table``'s."""

    def __init__(self, conn: Any, table: str) -> None:
        self.conn = conn
        self.insert = narrow_sql.ENTRIES.format(table=table)

    async def fetch(self, sql: str, *args: Any) -> Any:
        narrow, n = narrow_sql.INS.subn(lambda _: self.insert, sql)
        assert n == 1, "the ingest statement's deliveries insert was not found"
        return await self.conn.fetch(narrow, *args)


def ack_order(todo: list[pg_floor.Delivery], per_user: int, skip_every: int) -> list[pg_floor.Delivery]:
    """The acks as they reach the statement: frame order, or ``per_user`` consecutive seqs of a user together."""
    acked = [d for i, d in enumerate(todo) if not skip_every or (i + 1) % skip_every]
    if per_user <= 1:
        return acked
    by_user: dict[str, list[pg_floor.Delivery]] = {}
    for d in acked:
        by_user.setdefault(d[1], []).append(d)
    out: list[pg_floor.Delivery] = []
    for start in range(0, max(len(v) for v in by_user.values()), per_user):
        for mine in by_user.values():
            out += mine[start : start + per_user]
    return out


async def acks_as(kind: str, conn: Any, acks: list[pg_floor.Delivery], batch: int) -> None:
    if kind == "today":
        await pg_floor.socket_acks(conn, acks, batch)
        return
    for i in range(0, len(acks), batch):
        chunk = acks[i : i + batch]
        named = [n for n, _, _ in chunk] if kind == "byid" else [s for _, _, s in chunk]
        await conn.fetchval(narrow_sql.NARROW[kind][1], [u for _, u, _ in chunk], named)


async def one_round(m: Meter, args: argparse.Namespace, kind: str, shape: str, users: list[list[str]],
                    rounds: int) -> None:
    """Insert then ack ``rounds`` statements of ``users`` per notification, as ``kind`` stores them."""
    target = m.conn if kind == "today" else NarrowConnection(m.conn, narrow_sql.NARROW[kind][0])
    batches = [pg_floor.notifications(users) for _ in range(rounds)]
    n = rounds * sum(len(u) for u in users)
    todo: list[pg_floor.Delivery] = []

    async def ins() -> None:
        todo.extend(await pg_floor.insert(target, batches))

    await m.phase(f"{shape} insert, {kind}", n, ins)
    acks = ack_order(todo, args.per_user, args.skip_every)
    await m.phase(f"{shape} ack, {kind}", len(acks), lambda: acks_as(kind, m.conn, acks, args.ack_batch))
    if shape == "fanout":
        # Fresh statistics first: a plan cached while the tables were small scans them whole (docs/record.md)
        await m.conn.execute("ANALYZE")
        readers = users[0][: args.read_users] * READ_PASSES
        await m.phase(f"offline page read, {kind}", len(readers), lambda: offline_reads(kind, m.conn, readers))


async def offline_reads(kind: str, conn: Any, users: list[str]) -> None:
    """One page (100) of each user's offline queue from its start, as a client reconnecting without a cursor."""
    for user in users:
        if kind == "today":
            await queries_sql.offline_page(conn, user, 0, 100)
        else:
            await conn.fetch(narrow_sql.NARROW[kind][2].format(table=narrow_sql.NARROW[kind][0]), user, 0, 100)


def users_of(kind: str, args: argparse.Namespace) -> tuple[list[list[str]], list[str]]:
    """Each kind's own users (fan-out recipients, unicast pool): their seqs and cursors are that kind's alone."""
    fan = [f"fan-{kind}-{i}" for i in range(args.fanout_users)]
    return [fan] * args.fanout_notifications, [f"uni-{kind}-{i}" for i in range(args.unicast_users)]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    pg_floor.make_id = pg_floor.ID_MAKERS["v7"]
    sums: dict[str, list[float]] = {}
    async with fresh_database("narrow", keep=args.keep) as db:
        await db.conn.execute(narrow_sql.SCHEMA)
        kinds = args.kinds
        for kind in kinds:  # warm-up: counters exist, statistics
            await one_round(db.meter, args, kind, "warm", users_of(kind, args)[0], 1)
        await db.conn.execute("ANALYZE")
        for r in range(args.repeat):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                fan, pool = users_of(kind, args)
                uni = [[pool[(r * 7919 + i) % len(pool)]] for i in range(args.unicast_batch)]
                for shape, users, rounds in (("fanout", fan, args.rounds), ("unicast", uni, args.unicast_rounds)):
                    await one_round(db.meter, args, kind, shape, users, rounds)
                    res = db.meter.results
                    acked = res[f"{shape} insert, {kind}"]["us_cpu"] + res[f"{shape} ack, {kind}"]["us_cpu"]
                    sums.setdefault(f"{shape} acked, {kind}", []).append(round(acked, 2))
        sizes = await bytes_per_row(db.conn)
        apart = await db.conn.fetchval("SELECT count(*) FROM acks_apart")
        holes = await db.conn.fetchval("SELECT count(*) FROM ack_holes")
    for name, values in sums.items():
        print(f"{name:<28} {', '.join(f'{v:.1f}' for v in values)} µs per acknowledged delivery")
    print("bytes per delivery row, heap + indexes:", ", ".join(f"{t} {b:.0f}" for t, b in sizes.items()))
    print(f"acks kept apart (out of order): {apart}; holes (unacknowledged below a cursor): {holes}")
    return {"acked_us": sums, "bytes_per_row": sizes, "acks_apart": apart, "holes": holes, "per_user": args.per_user,
            "skip_every": args.skip_every, "ack_batch": args.ack_batch}


async def bytes_per_row(conn: Any) -> dict[str, float]:
    """What a delivery takes on disk (heap and indexes of every partition), as stored by each variant."""
    out = {}
    for table in ("deliveries", *dict.fromkeys(t for t, _, _ in narrow_sql.NARROW.values())):
        size, rows = await conn.fetchrow(
            "SELECT sum(pg_total_relation_size(relid)), (SELECT count(*) FROM " + table + ")"
            " FROM pg_partition_tree($1::regclass) WHERE isleaf", table)
        if rows:
            out[table] = int(size) / int(rows)
    return out


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", choices=["today", *narrow_sql.NARROW],
                   default=["today", "narrow", "holes", "keyed", "byid"], help="the records to compare (see above)")
    p.add_argument("--repeat", type=int, default=2, help="rounds of every kind, alternating which goes first")
    p.add_argument("--rounds", type=int, default=10, help="fan-out insert statements per round")
    p.add_argument("--fanout-notifications", type=int, default=10)
    p.add_argument("--fanout-users", type=int, default=1000)
    p.add_argument("--unicast-batch", type=int, default=2000)
    p.add_argument("--unicast-rounds", type=int, default=30)
    p.add_argument("--unicast-users", type=int, default=10_000)
    p.add_argument("--ack-batch", type=int, default=500, help="acks per statement")
    p.add_argument("--per-user", type=int, default=1, help="consecutive acks of a user gathered together")
    p.add_argument("--read-users", type=int, default=1000, help="users whose offline page is read after each fan-out")
    p.add_argument("--keep", action="store_true", help="keep the database")
    p.add_argument("--skip-every", type=int, default=0, help="leave every N-th delivery unacknowledged")
    return p.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))))
