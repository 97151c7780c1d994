"""The reconciler's fresh sweep under sustained ingest: how far behind does its cursor stay? (issue 24, window 6)

Ingest commits notifications through the store's own SQL (``store.ingest.insert_notifications``, in batches
as the gateway's group commit makes them, then ``clear_outbox`` as after the XADD; the stream itself is left
out) at a target rate from a few connections; by default each batch's
deliveries are then handed off (``record_handoffs``, as the stream worker's dispatch log does), so the sweep
finds what it finds in production: nothing pending. Meanwhile a retry worker (the production one, built by
``worker.factory.retry_worker``) runs the reconciler every ``--interval`` seconds, and once a second
this prints the sweep's lag: the notifications it should have passed (older than ``--stale`` seconds) and
has not, and how long the oldest of them has waited beyond ``--stale``. After ingest stops it keeps sampling
until the sweep has caught up. The tables start with ``--prefill`` old, finished notifications and statistics,
as on a running system. A figure, not a test; the last line is one JSON object.

    python loadtests/fresh_sweep_lag.py                                 # 20,000/s for 30 s
    python loadtests/fresh_sweep_lag.py --rate 5000 --duration 10 --no-handoff

PostgreSQL and Redis are embedded (pip packages) unless NOTIFLOW_DATABASE_URL / NOTIFLOW_REDIS_URL are set;
then a fresh database and key prefix are used there and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from stores import Stores

from notiflow.config import Settings
from notiflow.models import NewNotification
from notiflow.store import deliveries as deliveries_sql
from notiflow.store import ingest as ingest_sql
from notiflow.store import reconcile as reconcile_sql
from notiflow.store.pool import connect_pool
from notiflow.worker.factory import retry_worker

# What a running system already holds: finished notifications from an hour ago (the fresh sweep is past them).
_PREFILL = """
WITH n AS (
    INSERT INTO notifications (id, event, payload, recipients, created_at, enqueued, expires_at)
    SELECT gen_random_uuid(), 'bench.old', '{"order": 42}', 1, now() - interval '1 hour', true,
           now() + interval '29 days'
    FROM generate_series(1, $1) RETURNING id
)
INSERT INTO deliveries (notification_id, user_id, seq, status) SELECT id, 'old-' || id, 1, 'offline' FROM n
"""
_PAST_PREFILL = "SELECT txid, id FROM notifications ORDER BY txid DESC, id DESC LIMIT 1"


async def prefill(pool: Any, count: int) -> None:
    """``count`` old notifications, the fresh cursor past them, and statistics on the tables (which a running
    system has: without them the planner guesses, and some of the round's statements scan)."""
    async with pool.acquire() as conn:
        if count:
            await conn.execute(_PREFILL, count)
            last = await conn.fetchrow(_PAST_PREFILL)
            await reconcile_sql.set_fresh_cursor(conn, last["txid"], last["id"])
        await conn.execute("ANALYZE notifications, deliveries")


def batch(size: int, recipients: int, run: str, first: int) -> list[NewNotification]:
    return [
        NewNotification(
            id=uuid.uuid4(), user_ids=[f"{run}-{(first + i) * recipients + r}" for r in range(recipients)],
            event="bench.fresh", payload_json='{"order": 42}', ttl_seconds=None, webhook_url=None,
        )
        for i in range(size)
    ]


async def ingest(pool: Any, args: argparse.Namespace, until: float, counts: list[int], lane: int) -> None:
    """One connection's share of the target rate, in batches, paced against the clock."""
    per_s = args.rate / args.connections
    run = f"u{lane}-{uuid.uuid4().hex[:6]}"
    started, sent = time.monotonic(), 0
    while time.monotonic() < until:
        ahead_s = sent / per_s - (time.monotonic() - started)
        if ahead_s > 0:
            await asyncio.sleep(ahead_s)
        items = batch(args.batch, args.recipients, run, sent)
        async with pool.acquire() as conn:
            outbox_id = await ingest_sql.insert_notifications(conn, items)
            if args.handoff:
                await deliveries_sql.record_handoffs(conn, [(i.id, u, "offline") for i in items for u in i.user_ids])
        # As the gateway does once its XADD answered (the stream itself is left out: nothing reads it here).
        await ingest_sql.clear_outbox(pool, [outbox_id] if outbox_id else [])
        sent += len(items)
        counts[lane] += len(items)


async def run(args: argparse.Namespace, database_url: str, redis_url: str, prefix: str) -> dict[str, Any]:
    settings = Settings(database_url=database_url, redis_url=redis_url, key_prefix=prefix, node_id="bench-retry",
                        stream_key=f"{prefix}:stream", stuck_after_s=args.stale, reconcile_interval_s=args.interval)
    pool = await connect_pool(database_url, max_size=args.connections + 1)
    counts = [0] * args.connections
    samples: list[dict[str, float]] = []
    stop = asyncio.Event()
    await prefill(pool, args.prefill)
    async with retry_worker(settings) as worker:
        sweeper = asyncio.create_task(worker.run(stop))
        try:
            await measure(pool, args, counts, samples)
        finally:
            stop.set()
            await sweeper
            await pool.close()
    during = [s for s in samples if s["t"] <= args.duration]
    steady = during[len(during) // 2:] or during
    caught_up = [s["t"] - args.duration for s in samples if s["t"] > args.duration and s["behind"] == 0]
    return {
        "target_per_s": args.rate, "duration_s": args.duration, "stale_s": args.stale, "interval_s": args.interval,
        "handoff": args.handoff, "recipients": args.recipients, "prefill": args.prefill,
        "ingest_per_s": round(sum(counts) / args.duration),
        "lag_s_median_second_half": statistics.median(s["lag_s"] for s in steady) if steady else None,
        "lag_s_max": max((s["lag_s"] for s in samples), default=None),
        "behind_max": max((s["behind"] for s in samples), default=None),
        "caught_up_after_ingest_s": round(caught_up[0], 1) if caught_up else None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


async def measure(pool: Any, args: argparse.Namespace, counts: list[int], samples: list[dict[str, float]]) -> None:
    """Ingest for ``--duration`` and sample the lag once a second, then until caught up (or ``--drain``)."""
    began = time.monotonic()
    until = began + args.duration
    lanes = [asyncio.create_task(ingest(pool, args, until, counts, i)) for i in range(args.connections)]
    last = 0
    while True:
        await asyncio.sleep(1)
        async with pool.acquire() as conn:
            behind, lag_s = await reconcile_sql.fresh_lag(conn, args.stale)
        t = time.monotonic() - began
        total = sum(counts)
        samples.append({"t": round(t, 1), "ingest_per_s": total - last, "behind": behind, "lag_s": round(lag_s, 2)})
        last = total
        print(f"t={t:5.1f}s ingested/s={samples[-1]['ingest_per_s']:>7,} behind={behind:>8,} lag={lag_s:6.2f}s",
              flush=True)
        done = time.monotonic() >= until and all(task.done() for task in lanes)
        if done and (behind == 0 or time.monotonic() > until + args.drain):
            break
    for task in lanes:
        task.result()  # re-raise what an ingest lane failed with


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=int, default=20_000, help="target notifications/s (default 20000)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of ingest (default 30)")
    p.add_argument("--batch", type=int, default=500, help="notifications per commit (default 500)")
    p.add_argument("--connections", type=int, default=4, help="ingest connections (default 4)")
    p.add_argument("--recipients", type=int, default=1, help="recipients per notification (default 1)")
    p.add_argument("--stale", type=float, default=2.0, help="the sweep's stuck_after_s, s (default 2)")
    p.add_argument("--interval", type=float, default=2.0, help="reconcile interval, s (default 2, as deployed)")
    p.add_argument("--prefill", type=int, default=200_000,
                   help="old finished notifications in the tables before the run (default 200000)")
    p.add_argument("--drain", type=float, default=60.0, help="most seconds to wait for the sweep to catch up")
    p.add_argument("--no-handoff", dest="handoff", action="store_false",
                   help="leave every delivery pending (the sweep then puts all of it back on the stream)")
    args = p.parse_args()
    stores = Stores("freshlag")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        try:
            stores.prepare()
            url = stores.database(stack, Path(tmp) / "pg")
            redis_url = stores.redis(stack, Path(tmp) / "redis")
            out = asyncio.run(run(args, url, redis_url, stores.prefix))
        finally:
            stores.cleanup()
    print(f"fresh sweep at {out['ingest_per_s']:,} notifications/s ingested (target {args.rate:,}): lag median "
          f"{out['lag_s_median_second_half']} s (second half), max {out['lag_s_max']} s, at most {out['behind_max']:,} "
          f"behind; caught up {out['caught_up_after_ingest_s']} s after ingest stopped; load average "
          f"{out['loadavg_1m']}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
