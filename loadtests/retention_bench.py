"""Retention benchmark: does removal keep pace with 1,000 notifications/s?

Fills a fresh database with old finished work at scale (notifications, their deliveries and attempt rows,
plus old work that must be kept: open deliveries without a TTL), then runs the retention round
(``RetentionService.run_once``, the same code the retry worker runs) and prints rows/s, notifications/s
and how long one batch statement took (the longest time any row lock is held). Last line: one JSON object.

    python loadtests/retention_bench.py                        # 200,000 notifications, 1 recipient each
    python loadtests/retention_bench.py --notifications 50000 --recipients 10 --batch 5000

PostgreSQL is embedded (pip package) unless NOTIFLOW_DATABASE_URL is set; then a fresh database is created
on that server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from stores import Stores

from notiflow.config import Settings
from notiflow.devstack import EmbeddedPostgres, migrate
from notiflow.service.retention import RetentionService
from notiflow.store import retention as sql
from notiflow.store.pool import connect_pool

# Old finished work: every delivery delivered, two attempt rows each (a failure, then the hand-off).
_FILL = """
WITH n AS (
    INSERT INTO notifications (id, event, payload, recipients, created_at, enqueued)
    SELECT gen_random_uuid(), 'bench.old', '{"order": 42}', $2, now() - interval '40 days' + g * interval '1 ms', true
    FROM generate_series($1::bigint, $1::bigint + $3 - 1) AS g
    RETURNING id, created_at
), d AS (
    INSERT INTO deliveries (notification_id, user_id, seq, status, attempts, delivered_at, updated_at)
    SELECT n.id, 'user-' || r, nextval('bench_seq'), $4, 1, n.created_at, n.created_at
    FROM n, generate_series(1, $2) AS r
    RETURNING notification_id, user_id, updated_at
)
INSERT INTO delivery_attempts (notification_id, user_id, channel, attempt, outcome, node_id, started_at, finished_at)
SELECT d.notification_id, d.user_id, 'socket', a, CASE a WHEN 1 THEN 'failed' ELSE 'dispatched' END, 'bench',
       d.updated_at, d.updated_at
FROM d, generate_series(1, 2) AS a
"""


async def fill(pool: Any, total: int, recipients: int, status: str, chunk: int = 10_000) -> float:
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.execute("CREATE SEQUENCE IF NOT EXISTS bench_seq")
        for first in range(0, total, chunk):
            await conn.execute(_FILL, first, recipients, min(chunk, total - first), status)
        await conn.execute("ANALYZE")
    return time.perf_counter() - started


def time_statements(times: dict[str, list[float]]) -> None:
    """Record how long each batch statement of the round takes (each is one transaction: the longest any
    of its row locks is held). Wraps the store functions the service calls; the SQL is unchanged."""
    for name in ("remove_deliveries", "remove_notifications"):
        original = getattr(sql, name)

        async def timed(*args: Any, _original: Any = original, _name: str = name) -> Any:
            started = time.perf_counter()
            try:
                return await _original(*args)
            finally:
                times.setdefault(_name, []).append(time.perf_counter() - started)

        setattr(sql, name, timed)


async def run(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    settings = Settings(database_url=database_url, retention_days=30, retention_batch=args.batch)
    pool = await connect_pool(database_url, max_size=2)
    try:
        fill_s = await fill(pool, args.notifications, args.recipients, "delivered")
        await fill(pool, args.kept, 1, "offline")  # old but open: must stay, and costs the scan
        async with pool.acquire() as conn:
            rows_before = {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                           for t in ("notifications", "deliveries", "delivery_attempts")}
        times: dict[str, list[float]] = {}
        time_statements(times)
        started = time.perf_counter()
        removed = await RetentionService(settings, pool).run_once()
        round_s = time.perf_counter() - started
        async with pool.acquire() as conn:
            left = {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                    for t in ("notifications", "deliveries", "delivery_attempts")}
    finally:
        await pool.close()
    rows = sum(removed.values())
    expected_left = {"notifications": args.kept, "deliveries": args.kept, "delivery_attempts": 2 * args.kept}
    return {
        "notifications": args.notifications, "recipients": args.recipients, "kept_open": args.kept,
        "batch": args.batch, "fill_s": round(fill_s, 1), "rows_before": rows_before, "removed": removed,
        "round_s": round(round_s, 2), "rows_per_s": round(rows / round_s),
        "notifications_per_s": round(removed["notifications"] / round_s),
        "batch_statement_ms": {
            name.removeprefix("remove_"): {"n": len(ts), "median": round(1000 * statistics.median(ts), 1),
                                           "max": round(1000 * max(ts), 1)}
            for name, ts in times.items()
        },
        "left": left, "ok": left == expected_left,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notifications", type=int, default=200_000)
    p.add_argument("--recipients", type=int, default=1)
    p.add_argument("--kept", type=int, default=10_000, help="old notifications with an open delivery (kept)")
    p.add_argument("--batch", type=int, default=5000)
    args = p.parse_args()
    stores = Stores("retention")
    with tempfile.TemporaryDirectory() as tmp:
        embedded = None
        try:
            stores.prepare()
            url = stores.database_url
            if url is None:
                embedded = EmbeddedPostgres(Path(tmp))
                embedded.start()
                url = embedded.url
            migrate(url)
            out = asyncio.run(run(args, url))
        finally:
            if embedded is not None:
                embedded.stop()
            stores.cleanup()
    print(f"removed {sum(out['removed'].values()):,} rows ({out['removed']}) in {out['round_s']} s: "
          f"{out['rows_per_s']:,} rows/s, {out['notifications_per_s']:,} notifications/s "
          f"(x{out['recipients']} deliveries, 2 attempts each); batch statements: {out['batch_statement_ms']}; "
          f"kept {out['left']}")
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
