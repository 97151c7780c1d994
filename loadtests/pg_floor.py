"""PostgreSQL's floor per delivery: backend CPU of the store's own statements, one connection, nothing else.

Each phase runs the platform's SQL through its adapter functions (``store.ingest``, ``store.queries``,
``store.deliveries``), in batches shaped as the gateway and the stream worker make them, and reads the CPU
its backend used (utime + stime of ``/proc/<pg_backend_pid()>/stat``; PostgreSQL must run on this machine).
It prints µs of backend CPU (and of wall time) per delivery for:

- the ingest insert: fan-out (``--fanout-notifications`` notifications x ``--fanout-users`` recipients per
  statement) and unicast (``--unicast-batch`` one-recipient notifications per statement);
- the hand-off (dispatched/offline) recording, ``WRITE_CHUNK`` per statement, before any ack (every row
  moves) and after the acks (what the dispatch log writes when clients acked first);
- what the gateway writes once a commit's notifications are on the stream: the deletion of its outbox row
  (``store.ingest.clear_outbox``, one statement per XADD pipeline; until migration 015, an update of every
  notification's flag);
- the socket ack statement (``--ack-batch`` (user, id) pairs per statement, as the gateway's ack batcher
  sends them), the HTTP ack by ids (one request per user: its ids of one round) and by ``up_to_seq``.

A figure, not a test; the last line is one JSON object.

    NOTIFLOW_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python loadtests/pg_floor.py

A fresh database is created on that server, migrated, and dropped afterwards (``--keep`` keeps it). Ids are
version 7 (``--ids v7``, the day partitions, as the gateway makes them); before 2026-12-07 09:00 this script
made version 4 ids, which land in the legacy partition (``--ids v4``): figures from before compare with those.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from backend_cpu import Meter
from stores import fresh_database

from notiflow.ids import new_id
from notiflow.models import DeliveryStatus, NewNotification
from notiflow.service.dispatch_log import WRITE_CHUNK
from notiflow.store import deliveries as deliveries_sql
from notiflow.store import ingest as ingest_sql
from notiflow.store import queries as queries_sql

Delivery = tuple[uuid.UUID, str, int]  # (notification id, user id, seq)


#: How notification ids are made: version 7 (``ids.new_id``, the gateway's since migration 009: the day
#: partitions) or version 4 (the legacy partition, where every id of a database from before 009 lives).
ID_MAKERS: dict[str, Callable[[], uuid.UUID]] = {"v7": new_id, "v4": uuid.uuid4}
make_id = new_id


def notifications(users: list[list[str]]) -> list[NewNotification]:
    return [NewNotification(make_id(), u, "floor.test", '{"order": 42, "text": "hello"}', None, None)
            for u in users]


class OneConnection:
    """The measured connection, as the pool ``clear_outbox`` takes (the gateway passes its pool)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        yield self.conn


async def insert(
    conn: Any, batches: list[list[NewNotification]], outbox: list[uuid.UUID] | None = None
) -> list[Delivery]:
    """Insert each batch in one statement (the gateway's group commit); the deliveries in insert order. The
    commits' outbox rows are added to ``outbox`` when given."""
    out: list[Delivery] = []
    for batch in batches:
        outbox_id = await ingest_sql.insert_notifications(conn, batch)
        if outbox is not None and outbox_id is not None:
            outbox.append(outbox_id)
        for item in batch:
            assert item.seqs is not None
            out += [(item.id, u, s) for u, s in zip(item.user_ids, item.seqs, strict=True)]
    return out


async def handoffs(conn: Any, deliveries: list[Delivery]) -> None:
    offline = DeliveryStatus.OFFLINE.value
    for i in range(0, len(deliveries), WRITE_CHUNK):
        chunk = deliveries[i : i + WRITE_CHUNK]
        await deliveries_sql.record_handoffs(conn, [(n, u, offline) for n, u, _ in chunk])


async def outbox_cleared(conn: Any, outbox: list[uuid.UUID]) -> None:
    """As the gateway's enqueue loop, once per XADD pipeline: each commit's row here (one commit per pipeline)."""
    for outbox_id in outbox:
        await ingest_sql.clear_outbox(OneConnection(conn), [outbox_id])


async def socket_acks(conn: Any, deliveries: list[Delivery], batch: int) -> None:
    for i in range(0, len(deliveries), batch):
        await queries_sql.ack_pairs(conn, [(u, str(n)) for n, u, _ in deliveries[i : i + batch]])


async def http_acks_ids(conn: Any, deliveries: list[Delivery]) -> None:
    per_user: dict[str, list[uuid.UUID]] = {}
    for n, u, _ in deliveries:
        per_user.setdefault(u, []).append(n)
    for user, ids in per_user.items():
        await queries_sql.ack_ids(conn, user, ids)


async def http_acks_up_to(conn: Any, deliveries: list[Delivery]) -> None:
    top: dict[str, int] = {}
    for _, u, s in deliveries:
        top[u] = max(top.get(u, 0), s)
    for user, seq in top.items():
        await queries_sql.ack_up_to(conn, user, seq)


async def fanout(m: Meter, args: argparse.Namespace) -> None:
    users = [f"fan-{i}" for i in range(args.fanout_users)]
    per_stmt = args.fanout_notifications * args.fanout_users

    def batches() -> list[list[NewNotification]]:
        return [notifications([users] * args.fanout_notifications) for _ in range(args.rounds)]

    await insert(m.conn, batches())  # warm-up: counters exist, statistics
    await m.conn.execute("ANALYZE")
    todo: list[Delivery] = []
    outbox: list[uuid.UUID] = []

    async def ins() -> None:
        todo.extend(await insert(m.conn, batches(), outbox))

    n = args.rounds * per_stmt
    await m.phase("fanout insert", n, ins)
    await m.phase("fanout outbox cleared", n, lambda: outbox_cleared(m.conn, outbox))
    await m.phase("fanout handoff (unacked)", n, lambda: handoffs(m.conn, todo))
    await m.phase("fanout socket ack", n, lambda: socket_acks(m.conn, todo, args.ack_batch))
    await m.phase("fanout handoff (after ack)", n, lambda: handoffs(m.conn, todo))
    for name, ack in (("fanout http ack ids", http_acks_ids), ("fanout http ack up_to", http_acks_up_to)):
        todo = await insert(m.conn, batches())
        await m.phase(name, n, lambda ack=ack, todo=todo: ack(m.conn, todo))  # type: ignore[misc]


async def unicast(m: Meter, args: argparse.Namespace) -> None:
    pool = [f"uni-{i}" for i in range(args.unicast_users)]
    counter = iter(range(1 << 62))

    def batches() -> list[list[NewNotification]]:
        return [notifications([[pool[next(counter) % len(pool)]] for _ in range(args.unicast_batch)])
                for _ in range(args.unicast_rounds)]

    await insert(m.conn, batches())
    await m.conn.execute("ANALYZE")
    todo: list[Delivery] = []
    outbox: list[uuid.UUID] = []

    async def ins() -> None:
        todo.extend(await insert(m.conn, batches(), outbox))

    n = args.unicast_rounds * args.unicast_batch
    await m.phase("unicast insert", n, ins)
    await m.phase("unicast outbox cleared", n, lambda: outbox_cleared(m.conn, outbox))
    await m.phase("unicast handoff (unacked)", n, lambda: handoffs(m.conn, todo))
    await m.phase("unicast socket ack", n, lambda: socket_acks(m.conn, todo, args.ack_batch))
    await m.phase("unicast handoff (after ack)", n, lambda: handoffs(m.conn, todo))
    todo = await insert(m.conn, batches())
    await m.phase("unicast http ack ids", n, lambda: http_acks_ids(m.conn, todo))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    global make_id
    make_id = ID_MAKERS[args.ids]
    async with fresh_database("floor", keep=args.keep) as db:
        await fanout(db.meter, args)
        await unicast(db.meter, args)
    r = db.meter.results
    summary = {
        "fanout_acked_us": round(r["fanout insert"]["us_cpu"] + r["fanout socket ack"]["us_cpu"], 2),
        "fanout_acked_with_handoff_us": round(r["fanout insert"]["us_cpu"] + r["fanout socket ack"]["us_cpu"]
                                              + r["fanout handoff (after ack)"]["us_cpu"], 2),
        "unicast_acked_us": round(r["unicast insert"]["us_cpu"] + r["unicast socket ack"]["us_cpu"], 2),
        "unicast_acked_with_handoff_us": round(r["unicast insert"]["us_cpu"] + r["unicast socket ack"]["us_cpu"]
                                               + r["unicast handoff (after ack)"]["us_cpu"], 2),
    }
    print(f"acknowledged delivery (insert + socket ack): fan-out {summary['fanout_acked_us']} µs, "
          f"unicast {summary['unicast_acked_us']} µs; with the hand-off written after the ack: "
          f"{summary['fanout_acked_with_handoff_us']} / {summary['unicast_acked_with_handoff_us']} µs")
    return {"phases": r, "ids": args.ids, "ack_batch": args.ack_batch, **summary}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10, help="statements per insert phase")
    p.add_argument("--fanout-notifications", type=int, default=10)
    p.add_argument("--fanout-users", type=int, default=1000)
    p.add_argument("--unicast-batch", type=int, default=2000)
    p.add_argument("--unicast-rounds", type=int, default=30, help="statements per unicast insert phase")
    p.add_argument("--unicast-users", type=int, default=10_000)
    p.add_argument("--ack-batch", type=int, default=500, help="pairs per socket-ack statement")
    p.add_argument("--ids", choices=sorted(ID_MAKERS), default="v7",
                   help="v7: day partitions (what the gateway writes); v4: the legacy partition (before 009)")
    p.add_argument("--keep", action="store_true", help="keep the database")
    return p.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))))
