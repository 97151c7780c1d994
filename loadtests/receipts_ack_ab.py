"""What delivery receipts (migration 012) cost the ack statements of deliveries that asked for none: the socket
ack (``ack_pairs``) and the HTTP ack by ids, each as the plain UPDATE it was before (A) and as the statement with
the receipt outbox CTE (B), alternated chunk by chunk on one connection and one database, so that load on the
machine falls on both alike. Backend CPU per acknowledged delivery (``/proc`` of ``pg_backend_pid``, as
pg_floor.py); PostgreSQL must run on this machine. A figure, not a test; the last line is one JSON object.

    NOTIFLOW_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python loadtests/receipts_ack_ab.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

from backend_cpu import backend_cpu_s
from pg_floor import Delivery, insert, notifications
from stores import fresh_database

from notiflow.models import USER_SEP
from notiflow.store import queries

VARIANTS = {
    "socket": {"A": queries._ACK_PAIRS_UPDATE, "B": queries._ACK_PAIRS},
    "http_ids": {"A": queries._ACK_IDS_UPDATE, "B": queries._ACK_IDS},
}


async def ack(conn: Any, kind: str, sql: str, chunk: list[Delivery]) -> None:
    if kind == "socket":
        for i in range(0, len(chunk), 500):  # the gateway's ack batches
            part = chunk[i : i + 500]
            await conn.execute(sql, USER_SEP.join(u for _, u, _ in part), ",".join(str(n) for n, _, _ in part))
        return
    per_user: dict[str, list[uuid.UUID]] = {}
    for n, u, _ in chunk:
        per_user.setdefault(u, []).append(n)
    for user, ids in per_user.items():
        await conn.execute(sql, user, ids)


async def run(conn: Any, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    users = [f"ab-{i}" for i in range(args.users)]
    out: dict[str, Any] = {}
    for kind, sqls in VARIANTS.items():
        cpu = {"A": 0.0, "B": 0.0}
        count = {"A": 0, "B": 0}
        for r in range(args.rounds):
            todo = await insert(conn, [notifications([users] * args.notifications)])
            await conn.execute("ANALYZE deliveries")
            half = len(todo) // 2
            order = ("A", "B") if r % 2 == 0 else ("B", "A")  # neither always goes first
            for variant, chunk in zip(order, (todo[:half], todo[half:]), strict=True):
                cpu0 = backend_cpu_s(pid)
                await ack(conn, kind, sqls[variant], chunk)
                cpu[variant] += backend_cpu_s(pid) - cpu0
                count[variant] += len(chunk)
        us = {v: round(cpu[v] / count[v] * 1e6, 2) for v in cpu}
        out[kind] = {"plain_us": us["A"], "with_receipts_us": us["B"], "deliveries_each": count["A"]}
        print(f"{kind:<9} plain {us['A']:6.2f} µs   with receipt CTE {us['B']:6.2f} µs CPU per delivery"
              f"  ({count['A']} each, load {os.getloadavg()[0]:.2f})", flush=True)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database("ackab") as db:
        started = time.perf_counter()
        result = await run(db.conn, db.meter.pid, args)
        result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10, help="insert-and-ack rounds per ack kind")
    p.add_argument("--notifications", type=int, default=10, help="notifications per round")
    p.add_argument("--users", type=int, default=2000, help="recipients of each notification")
    return p.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))))
