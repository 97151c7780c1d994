"""What one per-request statement costs PostgreSQL as day partitions accumulate (issue 19): planning vs execution.

For each partition count given (``--days``: day partitions of the record, e.g. 5 as a fresh database or the
tests have, 35 as production holds with NOTIFLOW_RETENTION_DAYS=30), a fresh database on the server of
``NOTIFLOW_DATABASE_URL`` is migrated by the project's migrations, the past days' partitions are created by
``store.partitions.ensure`` and each day gets ``--per-day`` fan-outs to ``--users`` users (ids made that day,
``ids.id_at``; all acknowledged, as history is). Then, for each plan cache mode (``--modes``: ``auto``, the
server default, or ``force_generic_plan``, set per connection as the gateway's pool would set it), each statement
below runs ``--count`` times through the store's own functions (asyncpg: named prepared statements, as the
gateway), each time for another user with fresh open deliveries of today, and the script prints per statement:

- backend CPU and wall time per statement (utime + stime of ``/proc/<pg_backend_pid()>/stat``, as
  ``pg_floor.py``; PostgreSQL must run on this machine);
- planning and execution time (median of ``EXPLAIN (ANALYZE, SUMMARY) EXECUTE`` of the same text as an SQL
  prepared statement, executions 7-12, i.e. after the plan cache chose between custom and generic plans; in a
  transaction rolled back).

Statements: the HTTP ack by ids (1, 5 and 100 ids), by ``up_to_seq``, the offline queue page (cursor at the last acked
seq), last seq, ``GET /notifications/{id}`` (its four statements together, and the notification row alone), the
socket ack statement (1 and 50 pairs), the resync read (50 users), and ``--shapes`` variants (levers, not the
store's statements: see SHAPES). A figure, not a test; the last line is one JSON object.

    NOTIFLOW_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python loadtests/plan_cost.py --days 5 35
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from backend_cpu import backend_cpu_s
from stores import fresh_database

from notiflow.ids import id_at, new_id
from notiflow.models import NewNotification
from notiflow.store import ingest as ingest_sql
from notiflow.store import partitions
from notiflow.store import queries as q

MODES = {"auto": "auto", "generic": "force_generic_plan"}
Item = dict[str, Any]  # one target: user, its fresh ids and seqs


@dataclass(frozen=True, slots=True)
class Case:
    """A statement: what fresh rows each run needs (``fresh`` open deliveries per user, ``users`` per run), how
    the store runs it, and its SQL text and arguments (for EXPLAIN)."""

    name: str
    fresh: int
    run: Callable[[Any, list[Item]], Awaitable[Any]]
    sql: Callable[[list[Item]], tuple[str, list[Any]]] | None
    users: int = 1


def _pairs(items: list[Item]) -> tuple[str, str]:
    return chr(31).join(i["user"] for i in items), ",".join(str(i["ids"][0]) for i in items)


# Levers (not the store's statements). The UPDATE of an ack joins the locked rows by key: nothing prunes its
# target at plan time, so a custom plan plans every partition (and a generic one may hash-join them all).
_UPDATE_JOIN = "d.notification_id = l.notification_id AND d.user_id = l.user_id"
# The store's ack by ids before this script (its UPDATE joined the locked rows; now gated, store/queries.py).
_IDS_BEFORE = q._with_receipts(q._ACK_IDS_UPDATE)
_IDS_PRUNED = q._with_receipts(
    q._ACK_IDS_UPDATE.replace(_UPDATE_JOIN, _UPDATE_JOIN + " AND d.notification_id = ANY($2::uuid[])")
)
_PAIRS_ARRAY = "string_to_array($2, ',')::uuid[]"
_PAIRS_PRUNED = q._with_receipts(
    q._ACK_PAIRS_UPDATE.replace(
        "WHERE d.notification_id = p.nid AND",
        f"WHERE d.notification_id = p.nid AND d.notification_id = ANY({_PAIRS_ARRAY}) AND",
    ).replace(_UPDATE_JOIN, _UPDATE_JOIN + f" AND d.notification_id = ANY({_PAIRS_ARRAY})")
)
_PAIRS_UPDATE_PRUNED = q._with_receipts(
    q._ACK_PAIRS_UPDATE.replace(_UPDATE_JOIN, _UPDATE_JOIN + f" AND d.notification_id = ANY({_PAIRS_ARRAY})")
)
assert _IDS_PRUNED != _IDS_BEFORE and _PAIRS_PRUNED.count("ANY(string_to_array") == 2


def _ids_case(name: str, sql: str, n: int) -> Case:
    return Case(
        name,
        n,
        lambda c, it: c.fetchval(sql, it[0]["user"], it[0]["ids"][:n]),
        lambda it: (sql, [it[0]["user"], it[0]["ids"][:n]]),
    )


def _pairs_case(name: str, sql: str, users: int) -> Case:
    return Case(name, 1, lambda c, it: c.fetchval(sql, *_pairs(it)), lambda it: (sql, list(_pairs(it))), users=users)


SHAPES = [
    *(_ids_case(f"ack ids {n} before", _IDS_BEFORE, n) for n in (1, 5, 100)),
    *(_ids_case(f"ack ids {n} +update ANY", _IDS_PRUNED, n) for n in (1, 5, 100)),
    _pairs_case("socket 1 +update ANY", _PAIRS_UPDATE_PRUNED, 1),
    _pairs_case("socket 50 +update ANY", _PAIRS_UPDATE_PRUNED, 50),
    _pairs_case("socket 1 +both ANY", _PAIRS_PRUNED, 1),
    _pairs_case("socket 50 +both ANY", _PAIRS_PRUNED, 50),
    _pairs_case("socket 500 store", q._ACK_PAIRS, 500),
    _pairs_case("socket 500 +update ANY", _PAIRS_UPDATE_PRUNED, 500),
    _pairs_case("socket 500 +both ANY", _PAIRS_PRUNED, 500),
]

CASES = [
    *(
        Case(
            f"ack ids {n}",
            n,
            lambda c, it, n=n: q.ack_ids(c, it[0]["user"], it[0]["ids"][:n]),
            lambda it, n=n: (q._ACK_IDS, [it[0]["user"], it[0]["ids"][:n]]),
        )
        for n in (1, 5, 100)
    ),
    Case(
        "ack up_to_seq",
        5,
        lambda c, it: q.ack_up_to(c, it[0]["user"], it[0]["seqs"][-1]),
        lambda it: (q._ACK_UP_TO, [it[0]["user"], it[0]["seqs"][-1]]),
    ),
    Case(
        "offline page",
        5,
        lambda c, it: q.offline_page(c, it[0]["user"], it[0]["seqs"][0] - 1, 100),
        lambda it: (q._OFFLINE, [it[0]["user"], it[0]["seqs"][0] - 1, 100]),
    ),
    Case("last seq", 0, lambda c, it: q.last_seq(c, it[0]["user"]), lambda it: (q._LAST_SEQ, [it[0]["user"]])),
    Case("get notification (4 stmts)", 1, lambda c, it: q.get_notification(c, it[0]["ids"][0], None, 100), None),
    Case(
        "notification row",
        1,
        lambda c, it: c.fetchrow(q._NOTIFICATION, it[0]["ids"][0]),
        lambda it: (q._NOTIFICATION, [it[0]["ids"][0]]),
    ),
    Case(
        "socket ack 1 pair",
        1,
        lambda c, it: q.ack_pairs(c, [(i["user"], str(i["ids"][0])) for i in it]),
        lambda it: (q._ACK_PAIRS_CALL, [*_pairs(it), chr(31)]),  # the function (migration 014): its call only
    ),
    Case(
        "socket ack 50 pairs",
        1,
        lambda c, it: q.ack_pairs(c, [(i["user"], str(i["ids"][0])) for i in it]),
        lambda it: (q._ACK_PAIRS_CALL, [*_pairs(it), chr(31)]),
        users=50,
    ),
    Case(
        "resync 50 users",
        1,
        lambda c, it: q.open_for_users(c, {i["user"]: i["seqs"][0] - 1 for i in it}, 100),
        lambda it: (q._OPEN_FOR_USERS, [[i["user"] for i in it], [i["seqs"][0] - 1 for i in it], 100]),
        users=50,
    ),
]


async def fresh(conn: Any, users: list[str], per_user: int) -> list[Item]:
    """Per entry of ``users``, ``per_user`` open unicast deliveries of today (one insert statement per round)."""
    out: list[Item] = [{"user": u, "ids": [], "seqs": []} for u in users]
    for _ in range(per_user):
        batch = [NewNotification(new_id(), [u], "plan.cost", '{"n": 1}', None, None) for u in users]
        await ingest_sql.insert_notifications(conn, batch)
        for item, entry in zip(batch, out, strict=True):
            assert item.seqs is not None
            entry["ids"].append(item.id)
            entry["seqs"].append(item.seqs[0])
    return out


async def build(conn: Any, days: int, users: int, per_day: int) -> None:
    """``days`` day partitions (today - days + 4 .. today + 3), each past day and today with ``per_day``
    fan-outs to every user, all acknowledged."""
    today = (await partitions.server_now(conn)).date()
    await partitions.ensure(conn, today, ahead=partitions.AHEAD_DAYS, behind=days - partitions.AHEAD_DAYS - 1)
    everyone = [f"user-{i}" for i in range(users)]
    for back in range(days - partitions.AHEAD_DAYS - 1, -1, -1):
        noon = partitions.day_start(today - timedelta(days=back)) + timedelta(hours=12)
        batch = [
            NewNotification(id_at(noon + timedelta(seconds=k)), everyone, "plan.history", '{"n": 1}', None, None)
            for k in range(per_day)
        ]
        await ingest_sql.insert_notifications(conn, batch)
    await conn.execute("UPDATE deliveries SET status = 'delivered', delivered_at = now()")
    await conn.execute("VACUUM ANALYZE")
    count = await conn.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'deliveries_v7'::regclass")
    assert count == days, (count, days)


def _lit(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "'{" + ",".join(f'"{x}"' for x in v) + "}'"
    return "'" + str(v).replace("'", "''") + "'"


#: Executions of a statement that EXPLAIN runs per case; the medians read the last six (7-12: the plan cache
#: has decided by then), so ``--count`` may not be below it.
EXPLAINED = 12


class _Rollback(Exception):
    pass


async def measure(conn: Any, pid: int, case: Case, count: int, offset: int, users_with_history: int) -> dict[str, Any]:
    """Users with history (``offset`` on), each with ``case.fresh`` new open deliveries; nothing else open."""
    await conn.execute("UPDATE deliveries SET status = 'delivered' WHERE status <> 'delivered'")
    users = [f"user-{(offset + k) % users_with_history}" for k in range(count * case.users)]
    items = await fresh(conn, users, case.fresh) if case.fresh else [{"user": u} for u in users]
    runs = [items[k * case.users : (k + 1) * case.users] for k in range(count)]
    plan_ms = exec_ms = None
    if case.sql is not None:
        await explain(conn, case, runs)  # warms the catalog caches
        plan_ms, exec_ms = await explain(conn, case, runs)
    await case.run(conn, runs[-1])  # the prepared statement exists; the plan cache starts counting
    cpu0, wall0 = backend_cpu_s(pid), time.perf_counter()
    for it in runs:
        await case.run(conn, it)
    cpu, wall = backend_cpu_s(pid) - cpu0, time.perf_counter() - wall0
    return {
        "statement": case.name,
        "us_cpu": round(cpu / count * 1e6),
        "us_wall": round(wall / count * 1e6),
        "plan_ms": plan_ms,
        "exec_ms": exec_ms,
        "load1": round(os.getloadavg()[0], 2),
    }


async def explain(conn: Any, case: Case, runs: list[list[Item]]) -> tuple[float, float]:
    """Median planning and execution time, ms, of executions 7-12 of the statement as an SQL prepared
    statement (the plan cache decides as for asyncpg's), in a transaction rolled back."""
    assert case.sql is not None
    sql, _ = case.sql(runs[0])
    plan, execute = [], []
    try:
        async with conn.transaction():
            await conn.execute(f"PREPARE plan_cost AS {sql}")
            for n, it in enumerate(runs[:EXPLAINED]):
                args = ", ".join(_lit(a) for a in case.sql(it)[1])
                out = await conn.fetchval(f"EXPLAIN (ANALYZE, SUMMARY, FORMAT JSON) EXECUTE plan_cost({args})")
                doc = (json.loads(out) if isinstance(out, str) else out)[0]
                if n >= 6:
                    plan.append(doc["Planning Time"])
                    execute.append(doc["Execution Time"])
            await conn.execute("DEALLOCATE plan_cost")
            raise _Rollback
    except _Rollback:
        pass
    return round(statistics.median(plan), 3), round(statistics.median(execute), 3)


async def one_database(days: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cases = [c for c in CASES + SHAPES if not args.cases or any(w in c.name for w in args.cases)]
    async with fresh_database("plancost") as db:
        await build(db.conn, days, args.users, args.per_day)
        await db.conn.close()  # each mode measures on a connection of its own
        offset = 0
        for mode in args.modes:
            conn = await asyncpg.connect(db.url, server_settings={"plan_cache_mode": MODES[mode]})
            try:
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                for case in cases:
                    row = await measure(conn, pid, case, args.count, offset, args.users)
                    offset += args.count * case.users
                    out.append({"days": days, "mode": mode, **row})
                    print(
                        f"{days:>4} {mode:<8} {row['statement']:<28} {row['us_cpu']:>6} µs CPU {row['us_wall']:>6}"
                        f" µs wall  plan {row['plan_ms']} ms exec {row['exec_ms']} ms  (load {row['load1']})",
                        flush=True,
                    )
            finally:
                await conn.close()
    return out


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for days in args.days:
        out += await one_database(days, args)
    return out


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``, else a usage error naming the bound."""

    def check(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    check.__name__ = "integer"  # argparse names the type in its error for a non-number
    return check


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, nargs="+", default=[5, 35], help="day partitions (at least 5)")
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["auto", "generic"])
    p.add_argument("--users", type=int, default=2000, help="users with history")
    p.add_argument("--per-day", type=int, default=3, help="fan-outs to every user per past day")
    p.add_argument(
        "--count",
        type=at_least(EXPLAINED),
        default=200,
        help=f"statements measured per case (users: count x users); at least {EXPLAINED}, the"
        " executions the plan-time median reads",
    )
    p.add_argument("--cases", nargs="*", default=[], help="only the statements whose name contains one of these")
    args = p.parse_args()
    if min(args.days) < partitions.AHEAD_DAYS + 2:
        p.error(f"--days: at least {partitions.AHEAD_DAYS + 2}")
    return args


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))))
