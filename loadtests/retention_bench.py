"""Retention benchmark: how long does dropping a day of delivery rows take, and does it slow ingest and acks?

Fills the partitions of ``--days`` days (40, 41, ... days back) of a fresh database with old, expired work at scale
(notifications with ``--recipients`` deliveries each, one attempt row per delivery; ``--rows`` delivery rows a day).
Then, once per day, runs the same ingest-and-ack load twice for ``--seconds``: once alone, once with a retention
round (``RetentionService.run_once``, the code the retry worker runs) started a second in, whose retention period
makes only the oldest filled day due: it detaches and drops that day. Prints the statement time of each day's
DETACH ... CONCURRENTLY + DROP statements, and the p50/p99 of ingest (``insert_notifications``, one batch) and
ack (``ack_ids``, one user) statements alone and with the rounds (the whole phases, and the statements that
overlapped the round). Last line: one JSON object.

    python loadtests/retention_bench.py                         # 3 days of 1,000,000 delivery rows
    python loadtests/retention_bench.py --rows 10000000 --days 1 --seconds 10

PostgreSQL is embedded (pip package) unless NOTIFLOW_DATABASE_URL is set; then a fresh database is created
on that server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import page_cache
from stores import Stores

from notiflow.config import Settings
from notiflow.ids import new_id
from notiflow.models import NewNotification
from notiflow.service.retention import RetentionService
from notiflow.store import ingest as ingest_sql
from notiflow.store import partitions
from notiflow.store import queries as query_sql
from notiflow.store.partitions import TABLES
from notiflow.store.pool import connect_pool

# Version 7 ids made at $1 (Unix ms) + g ms: what ids.py makes, built in SQL for speed.
_FILL = """
WITH n AS (
    INSERT INTO notifications (id, event, payload, recipients, created_at, expires_at, enqueued, era)
    SELECT (lpad(to_hex($1::bigint + g), 12, '0') || '7' || substr(md5(g::text), 1, 3) || '8'
            || substr(md5(random()::text), 1, 15))::uuid,
           'bench.old', '{"order": 42}', $3, to_timestamp(($1 + g) / 1000.0), now() - interval '1 day', true, 1
    FROM generate_series($2::bigint, $2::bigint + $4 - 1) AS g
    RETURNING id, created_at
), d AS (
    INSERT INTO deliveries (notification_id, user_id, seq, status, attempts, delivered_at, updated_at, era)
    SELECT n.id, 'user-' || r, 1, 'delivered', 1, n.created_at, n.created_at, 1
    FROM n, generate_series(1, $3) AS r
    RETURNING notification_id, user_id, updated_at
)
INSERT INTO delivery_attempts (notification_id, user_id, channel, attempt, outcome, node_id, started_at, finished_at,
                               era)
SELECT d.notification_id, d.user_id, 'socket', 1, 'failed', 'bench', d.updated_at, d.updated_at, 1 FROM d
"""
# --no-attempts: the same without the attempt rows (a data-modifying CTE runs whether or not it is read).
_FILL_NO_ATTEMPTS = _FILL.split("INSERT INTO delivery_attempts")[0] + "SELECT count(*) FROM d\n"


async def fill(pool: Any, rows: int, recipients: int, days_back: int, attempts: bool = True,
               chunk: int = 20_000) -> tuple[float, str]:
    """``rows`` delivery rows (and an attempt row each, unless not ``attempts``) in the day ``days_back`` days
    back; (seconds, the day's deliveries partition)."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        day = (await partitions.server_now(conn)).date() - timedelta(days=days_back)
        await partitions.ensure(conn, day, ahead=0, behind=0)
        base_ms = int(partitions.day_start(day).timestamp() * 1000) + 1000
        notifications = rows // recipients
        per = max(1, chunk // recipients)
        for first in range(0, notifications, per):
            sql = _FILL if attempts else _FILL_NO_ATTEMPTS
            await conn.execute(sql, base_ms, first, recipients, min(per, notifications - first), timeout=600)
        await conn.execute("ANALYZE", timeout=3600)
    return time.perf_counter() - started, f"deliveries_p{day:%Y%m%d}"


def day_tables(deliveries_part: str) -> list[str]:
    """The day's partitions of every table, from its deliveries partition's name."""
    return [deliveries_part.replace("deliveries", table, 1) for table in TABLES]


class Strace:
    """``strace -c`` (wall time per call) of every backend of the bench's database, file and sync calls only."""

    _CALLS = "ftruncate,truncate,unlink,unlinkat,fsync,fdatasync,pwrite64,pread64"

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def start(cls, pool: Any) -> Strace:
        async with pool.acquire() as conn:
            pids = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        args = [a for r in pids for a in ("-p", str(r["pid"]))]
        proc = await asyncio.create_subprocess_exec(
            "strace", "-c", "-w", "-f", "--seccomp-bpf", "-e", f"trace={cls._CALLS}", *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)  # attached
        return cls(proc)

    async def stop(self) -> str:
        self._proc.send_signal(signal.SIGINT)
        _, err = await self._proc.communicate()
        return "\n".join(line for line in err.decode().splitlines() if not line.startswith("strace:"))


class Load:
    """Ingest batches and per-user acks, one statement each, back to back on ``workers`` connections."""

    def __init__(self, pool: Any, workers: int, batch: int, recipients: int) -> None:
        self._pool, self._workers, self._batch, self._recipients = pool, workers, batch, recipients
        self.ops: list[tuple[str, float, float]] = []  # (kind, start, end) in perf_counter seconds

    async def _worker(self, k: int, until: float) -> None:
        users = [f"live-{k}-{i}" for i in range(self._recipients)]
        while time.perf_counter() < until:
            items = [NewNotification(new_id(), users, "bench.live", "{}", None, None) for _ in range(self._batch)]
            async with self._pool.acquire() as conn:
                t0 = time.perf_counter()
                await ingest_sql.insert_notifications(conn, items)
                t1 = time.perf_counter()
                await query_sql.ack_ids(conn, users[0], [i.id for i in items])
                t2 = time.perf_counter()
            self.ops += [("ingest", t0, t1), ("ack", t1, t2)]

    async def run(self, seconds: float) -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(self._worker(k, until) for k in range(self._workers)))


def percentiles(ops: list[tuple[str, float, float]], kind: str, window: tuple[float, float] | None = None) -> dict:
    ms = sorted(1000 * (e - s) for k, s, e in ops
                if k == kind and (window is None or (e >= window[0] and s <= window[1])))
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50": round(ms[len(ms) // 2], 2), "p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
            "max": round(ms[-1], 2)}


async def run(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    pool = await connect_pool(database_url, max_size=args.workers + 2)
    alone, during, drops, windows, done_all, cache, traces = [], [], [], [], [], [], []
    evicted = None
    try:
        fill_s, parts = 0.0, []
        for k in range(args.days):  # days 40, 41, ... back; the oldest goes first
            took, part = await fill(pool, args.rows, args.recipients, 40 + k, not args.no_attempts)
            fill_s += took
            parts.append(part)
        async with pool.acquire() as conn:
            filled = await conn.fetchval(f"SELECT count(*) FROM {parts[0]}")
            files = {part: await page_cache.relation_files(conn, day_tables(part)) for part in parts}
            if args.cold:
                evicted = await page_cache.evict(conn, [f for fs in files.values() for f in fs])
        for k in reversed(range(args.days)):
            # A retention period that makes only the oldest filled day due: one day dropped per round.
            retention = RetentionService(Settings(database_url=database_url, retention_days=40 + k - 1.5), pool)
            quiet = Load(pool, args.workers, args.batch, args.recipients)
            await quiet.run(args.seconds)
            loud = Load(pool, args.workers, args.batch, args.recipients)

            async def round_later(service: RetentionService = retention,
                                  paths: list[Path] = files[parts[k]]) -> tuple[float, float, dict[str, int]]:
                await asyncio.sleep(1.0)
                cache.append({"cached_size_mib": await asyncio.to_thread(page_cache.cached_mib, paths),
                              "dirty_mib": page_cache.dirty_mib()})
                tracer = await Strace.start(pool) if args.strace else None
                t0 = time.perf_counter()
                done = await service.run_once()
                t1 = time.perf_counter()
                if tracer is not None:
                    traces.append(await tracer.stop())
                return t0, t1, done

            _, (r0, r1, done) = await asyncio.gather(loud.run(args.seconds), round_later())
            alone += quiet.ops
            during += loud.ops
            windows.append((r0, r1))
            drops += retention.last_drops
            done_all.append(done)
        async with pool.acquire() as conn:
            gone = [await conn.fetchval("SELECT to_regclass($1) IS NULL", part) for part in parts]
    finally:
        await pool.close()
    overlapping = [op for op in during if any(op[2] >= w0 and op[1] <= w1 for w0, w1 in windows)]
    return {
        "rows_per_day": filled, "days": args.days, "recipients": args.recipients, "fill_s": round(fill_s, 1),
        "attempt_rows": not args.no_attempts, "cold": evicted, "before_round": cache, "strace": traces,
        "rounds": done_all, "round_s": [round(w1 - w0, 3) for w0, w1 in windows],
        "drop_statement_s": [round(sum(t for _, t in drop), 3) for drop in drops],
        "statements_ms": [[(what, round(1000 * t, 1)) for what, t in drop] for drop in drops],
        "ingest_batch": args.batch, "workers": args.workers, "seconds": args.seconds,
        "alone": {k: percentiles(alone, k) for k in ("ingest", "ack")},
        "with_round": {k: percentiles(during, k) for k in ("ingest", "ack")},
        "overlapping_round": {k: percentiles(overlapping, k) for k in ("ingest", "ack")},
        "load_average": os.getloadavg(),
        "ok": all(gone) and [d["partitions_dropped"] for d in done_all] == [1] * args.days,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="delivery rows in each day that is dropped")
    p.add_argument("--days", type=int, default=3, help="days filled; each load phase pair drops one")
    p.add_argument("--recipients", type=int, default=10)
    p.add_argument("--seconds", type=float, default=6.0, help="length of each load phase")
    p.add_argument("--workers", type=int, default=2, help="connections running ingest + ack back to back")
    p.add_argument("--batch", type=int, default=20, help="notifications per ingest statement")
    p.add_argument("--no-attempts", action="store_true", help="fill no delivery_attempts rows")
    p.add_argument("--tablespace", help="create the database in this existing tablespace (another filesystem)")
    p.add_argument("--cold", action="store_true",
                   help="after filling: CHECKPOINT, sync and drop the OS page cache (root, same machine as the "
                        "server), so the dropped partitions are not cached, as a retention period old one is not")
    p.add_argument("--strace", action="store_true",
                   help="strace -c the database's backends during each round (file and sync calls, wall time)")
    args = p.parse_args()
    stores = Stores("retention")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        try:
            stores.prepare(args.tablespace)
            out = asyncio.run(run(args, stores.database(stack, Path(tmp))))
        finally:
            stores.cleanup()
    attempts = "one attempt row each" if out["attempt_rows"] else "no attempt rows"
    print(f"dropped {out['days']} days of {out['rows_per_day']:,} delivery rows each (x{out['recipients']} per "
          f"notification, {attempts}), one per round: statement time of each day's DETACH CONCURRENTLY + "
          f"DROP {out['drop_statement_s']} s, rounds {out['round_s']} s; the first day's statements:")
    for what, ms in out["statements_ms"][0] if out["statements_ms"] else []:
        print(f"  {ms:8.1f} ms  {what}")
    for kind in ("ingest", "ack"):
        print(f"{kind} statement ms: alone {out['alone'][kind]}; phase with the round {out['with_round'][kind]}; "
              f"overlapping the round {out['overlapping_round'][kind]}")
    print(f"page cache: {out['cold'] or 'as the fill left it (warm)'}; before each round, the day's files cached / "
          f"size MiB and the machine's dirty MiB: {out['before_round']}")
    for trace in out["strace"]:
        print(trace)
    print(f"load average {out['load_average']}")
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
