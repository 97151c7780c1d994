"""Trials for issue 19 (the cost of an acknowledged delivery): what each idea would save, before any is built.

Two kinds of trial, each on a fresh database on the server of ``NOTIFLOW_DATABASE_URL`` (dropped afterwards),
PostgreSQL backend CPU read from /proc as ``pg_floor.py`` does, version 7 ids (the day partitions):

- ``schema``: the ingest insert (the store's own statement) and a socket ack on variants of the day
  partitions, made by DDL after the migrations (not migrations themselves): ``base``; ``nopartial`` (without
  the partial indexes webhook_work and socket_due); ``ff100`` (fillfactor 100); ``nocheck`` (without the
  status CHECKs); ``narrow`` (the retry/webhook columns, delivered_at and updated_at dropped); ``collc``
  (user_id in collation "C"); ``nouserseq`` (without the (user_id, seq) index: what that index costs).
  Chain them with ``+``. The ack is the store's statement shape setting only ``status`` (``narrow`` has
  no timestamps to write; the ``ack`` trial shows that writing them costs nothing measurable).
- ``ack``: socket-ack statement variants on one database: ``store`` (store.queries.ack_pairs),
  ``status_only`` (the same without the timestamps), ``era`` (the same pruned by era: no probe of the
  legacy partition), ``nolock`` (one UPDATE joined with the sorted pairs, no separate lock step: NOT in key
  order), ``by_seq`` (acks naming (user, seq): found through (user_id, seq)), and the lookups alone
  (``lookup``, ``lock``, ``by_seq_lookup``: no update). ``--legacy-rows`` first fills the legacy partition
  (version 4 ids), as in a database upgraded within the retention period.

    NOTIFLOW_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python loadtests/ack_cost_trials.py schema base nopartial+ff100+nocheck+narrow collc nouserseq
    NOTIFLOW_DATABASE_URL=... python loadtests/ack_cost_trials.py ack store nolock by_seq --legacy-rows 300000
    NOTIFLOW_DATABASE_URL=... python loadtests/ack_cost_trials.py paced 0 20 --rates 200 1000 5000

- ``paced``: socket acks arriving one per frame at given rates through the group commit (batching.Batcher with
  the store's statement, as the gateway), for each gathering time given (ms, WS_ACK_GATHER_MS): PostgreSQL CPU
  per ack and pairs per statement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from typing import Any

import pg_floor
from backend_cpu import backend_cpu_s
from stores import fresh_database

from notiflow.batching import Batcher
from notiflow.models import OPEN_STATUSES, USER_SEP, sql_list

_OPEN = sql_list(OPEN_STATUSES)
_BY_ID = """p AS (SELECT DISTINCT nid, uid
    FROM unnest(string_to_array($2, ',')::uuid[], string_to_array($1, chr(31))) AS p(nid, uid) ORDER BY nid, uid)"""
_BY_SEQ = """p AS (SELECT DISTINCT uid, seq
    FROM unnest(string_to_array($2, ',')::bigint[], string_to_array($1, chr(31))) AS p(seq, uid) ORDER BY uid, seq)"""
_FIND_ID = "d.notification_id = p.nid AND d.user_id = p.uid"
_FIND_ERA = "d.era = notiflow_era(p.nid) AND d.notification_id = p.nid AND d.user_id = p.uid"
_FIND_SEQ = "d.user_id = p.uid AND d.seq = p.seq"
_ALL = "status = 'delivered', delivered_at = now(), updated_at = now(), next_attempt_at = NULL"


def _locked_update(pairs: str, find: str, sets: str, era: bool = False) -> str:
    keys = "era, notification_id, user_id" if era else "notification_id, user_id"
    match = " AND ".join(f"d.{k} = l.{k}" for k in keys.split(", "))
    return f"""WITH {pairs}, locked AS (
    SELECT l.* FROM p CROSS JOIN LATERAL (
        SELECT {", ".join("d." + k for k in keys.split(", "))} FROM deliveries d
        WHERE {find} AND d.status IN {_OPEN} FOR UPDATE) l)
UPDATE deliveries d SET {sets} FROM locked l WHERE {match}"""


def _lookup(pairs: str, find: str, lock: bool) -> str:
    return f"""WITH {pairs} SELECT count(*) FROM p CROSS JOIN LATERAL (
    SELECT d.notification_id FROM deliveries d WHERE {find} AND d.status IN {_OPEN}{" FOR UPDATE" if lock else ""}) l"""


ACKS: dict[str, str | None] = {
    "store": None,
    "status_only": _locked_update(_BY_ID, _FIND_ID, "status = 'delivered'"),
    "era": _locked_update(_BY_ID, _FIND_ERA, _ALL, era=True),
    "nolock": f"WITH {_BY_ID} UPDATE deliveries d SET {_ALL} FROM p WHERE {_FIND_ID} AND d.status IN {_OPEN}",
    "by_seq": _locked_update(_BY_SEQ, _FIND_SEQ, _ALL),
    "lookup": _lookup(_BY_ID, _FIND_ID, lock=False),
    "lock": _lookup(_BY_ID, _FIND_ID, lock=True),
    "by_seq_lookup": _lookup(_BY_SEQ, _FIND_SEQ, lock=False),
}
_EACH_DAY = (
    "DO $$ DECLARE r record; BEGIN FOR r IN SELECT inhrelid::regclass AS t FROM pg_inherits "
    "WHERE inhparent = 'deliveries_v7'::regclass LOOP EXECUTE format('ALTER TABLE %s SET (fillfactor = 100)', "
    "r.t); END LOOP; END $$"
)
DDL: dict[str, list[str]] = {
    "base": [],
    "nopartial": ["DROP INDEX deliveries_v7_webhook_work", "DROP INDEX deliveries_v7_socket_due"],
    "ff100": [_EACH_DAY],
    "nocheck": [
        "ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_ok",
        "ALTER TABLE deliveries DROP CONSTRAINT deliveries_webhook_status_ok",
    ],
    "narrow": [
        "ALTER TABLE deliveries DROP COLUMN attempts, DROP COLUMN webhook_attempts, DROP COLUMN next_attempt_at,"
        " DROP COLUMN webhook_next_at, DROP COLUMN last_error, DROP COLUMN delivered_at, DROP COLUMN updated_at"
    ],
    "collc": [
        'ALTER TABLE deliveries ALTER COLUMN user_id TYPE text COLLATE "C"',
        'ALTER TABLE user_seqs ALTER COLUMN user_id TYPE text COLLATE "C"',
    ],
    "nouserseq": ["DROP INDEX deliveries_v7_user_seq"],
}
FAN_USERS = [f"fan-{i}" for i in range(1000)]
UNI_USERS = [f"uni-{i}" for i in range(10_000)]


async def ack(conn: Any, variant: str, todo: list[pg_floor.Delivery], batch: int = 500) -> None:
    sql = ACKS[variant]
    for i in range(0, len(todo), batch):
        chunk = todo[i : i + batch]
        if sql is None:
            await pg_floor.queries_sql.ack_pairs(conn, [(u, str(n)) for n, u, _ in chunk])
            continue
        keys = ",".join(str(s if variant.startswith("by_seq") else n) for n, _, s in chunk)
        await conn.execute(sql, USER_SEP.join([u for _, u, _ in chunk]), keys)


async def cpu_us(conn: Any, pid: int, count: int, run: Any) -> float:
    cpu0 = backend_cpu_s(pid)
    await run
    return round((backend_cpu_s(pid) - cpu0) / count * 1e6, 2)


def fan(rounds: int) -> list[list[Any]]:
    return [pg_floor.notifications([FAN_USERS] * 10) for _ in range(rounds)]


def uni(rounds: int, start: int) -> list[list[Any]]:
    return [
        pg_floor.notifications([[UNI_USERS[(start + j * 2000 + k) % len(UNI_USERS)]] for k in range(2000)])
        for j in range(rounds)
    ]


async def on_fresh_database(trial: Any, *args: Any) -> Any:
    async with fresh_database("trial") as db:
        return await trial(db.conn, db.meter.pid, *args)


async def schema_trial(conn: Any, pid: int, chain: list[str], repeat: int) -> dict[str, Any]:
    for name in chain:
        for ddl in DDL[name]:
            await conn.execute(ddl)
    await pg_floor.insert(conn, fan(5) + uni(1, 0))
    await conn.execute("ANALYZE")
    out: dict[str, Any] = {"variant": "+".join(chain), "fanout_insert": [], "fanout_ack": [], "unicast_insert": []}
    for r in range(repeat):
        todo: list[pg_floor.Delivery] = []

        async def ins(batches: list[list[Any]], into: list[pg_floor.Delivery]) -> None:
            into.extend(await pg_floor.insert(conn, batches))

        out["fanout_insert"].append(await cpu_us(conn, pid, 100_000, ins(fan(10), todo)))
        out["fanout_ack"].append(await cpu_us(conn, pid, len(todo), ack(conn, "status_only", todo)))
        out["unicast_insert"].append(await cpu_us(conn, pid, 30_000, ins(uni(15, r * 7), [])))
    out["load1"] = round(os.getloadavg()[0], 2)
    return out


async def ack_trial(
    conn: Any, pid: int, variants: list[str], legacy_rows: int, repeat: int, batch: int
) -> list[dict[str, Any]]:
    await pg_floor.insert(conn, fan(3))
    if legacy_rows:
        pg_floor.make_id = uuid.uuid4
        await pg_floor.insert(conn, fan(legacy_rows // 10_000))
        pg_floor.make_id = pg_floor.new_id
    await conn.execute("ANALYZE")
    out = []
    for _ in range(repeat):
        for variant in variants:
            # At most 400 statements: small batches measure the per-statement cost.
            todo = (await pg_floor.insert(conn, fan(5)))[: batch * 400]
            us = await cpu_us(conn, pid, len(todo), ack(conn, variant, todo, batch))
            out.append(
                {
                    "variant": variant,
                    "batch": batch,
                    "us_cpu": us,
                    "legacy_rows": legacy_rows,
                    "load1": round(os.getloadavg()[0], 2),
                }
            )
            print(json.dumps(out[-1]), flush=True)
            # Every row open again for the next variant's lookups (the lookups alone moved nothing).
            await conn.execute("UPDATE deliveries SET status = 'dispatched' WHERE status = 'pending'")
    return out


async def paced_trial(conn: Any, pid: int, gathers_ms: list[int], rates: list[int], seconds: float) -> None:
    """Socket acks as the gateway sends them: one pair per ack frame at ``rate`` frames/s through the group
    commit (batching.Batcher, as service/queries.py), for each gathering time; CPU of the flushing backend."""
    await pg_floor.insert(conn, fan(3))
    await conn.execute("ANALYZE")
    for rate in rates:
        for gather_ms in gathers_ms:
            todo = (await pg_floor.insert(conn, fan(5)))[: int(rate * seconds)]

            async def flush(pairs: list[tuple[str, str]]) -> list[int | BaseException]:
                await pg_floor.queries_sql.ack_pairs(conn, pairs)
                return [1] * len(pairs)

            batcher: Batcher[tuple[str, str], int] = Batcher(
                flush, max_batch=500, name="acks", gather_s=gather_ms / 1000
            )
            batcher.start()
            loop = asyncio.get_running_loop()
            cpu0, start = backend_cpu_s(pid), loop.time()
            for i, (n, u, _) in enumerate(todo):
                if (ahead := start + i / rate - loop.time()) > 0:
                    await asyncio.sleep(ahead)
                batcher.enqueue([(u, str(n))])
            await batcher.close(30)
            cpu = backend_cpu_s(pid) - cpu0
            print(
                json.dumps(
                    {
                        "rate_per_s": rate,
                        "gather_ms": gather_ms,
                        "us_cpu": round(cpu / len(todo) * 1e6, 1),
                        "pairs_per_statement": round(batcher.items / max(batcher.batches, 1), 1),
                        "achieved_per_s": round(len(todo) / (loop.time() - start)),
                        "load1": round(os.getloadavg()[0], 2),
                    }
                ),
                flush=True,
            )


async def main(args: argparse.Namespace) -> None:
    pg_floor.make_id = pg_floor.new_id
    if args.kind == "paced":
        await on_fresh_database(paced_trial, [int(v) for v in args.variants], args.rates, args.seconds)
    elif args.kind == "schema":
        for spec in args.variants:
            print(json.dumps(await on_fresh_database(schema_trial, spec.split("+"), args.repeat)), flush=True)
    else:
        await on_fresh_database(ack_trial, args.variants, args.legacy_rows, args.repeat, args.batch)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["schema", "ack", "paced"])
    p.add_argument("variants", nargs="+", help=f"schema: chains of {sorted(DDL)}; ack: {sorted(ACKS)}")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--batch", type=int, default=500, help="ack: pairs per statement")
    p.add_argument("--rates", type=int, nargs="+", default=[200, 1000, 5000], help="paced: ack frames per second")
    p.add_argument("--seconds", type=float, default=5, help="paced: duration of each rate and gathering time")
    p.add_argument("--legacy-rows", type=int, default=0, help="ack: deliveries put in the legacy partition first")
    args = p.parse_args()
    known = set(DDL) if args.kind == "schema" else set(ACKS)
    if args.kind == "paced":
        if not all(v.isdigit() for v in args.variants):
            p.error("paced: the variants are gathering times, ms")
        return args
    if bad := {v for spec in args.variants for v in spec.split("+")} - known:
        p.error(f"unknown variants {sorted(bad)}")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
