"""Does a paced fan-out to one group serialize on its users' ``user_seqs`` rows? (issue 19)

Every ingest statement bumps, and row-locks until its commit, the ``user_seqs`` row of each recipient. Two
fan-outs to the same users therefore cannot commit side by side: the second waits for the first. This measures
how much that costs, with the store's own ingest statement (``store.ingest.insert_notifications``, one statement,
its own transaction, as the gateway commits a batch without idempotency keys) on a fresh database:

- a pacer makes ``--rate`` notifications per second, each to ``--users`` recipients, for ``--seconds``;
- ``--committers`` connections stand for gateways: notifications are dealt to them in turn, and each commits what
  has queued for it as one batch (group commit, as the gateway's Batcher: one flush at a time per gateway);
- ``same``: every notification goes to the same users; ``disjoint``: each to a group of its own (``--groups``
  groups of ``--users``, in turn), so that no two in flight share a row;
- a sampler reads ``pg_stat_activity`` of the committers every ``--sample-ms`` and counts the samples in which
  one waits on a lock (``wait_event_type = 'Lock'``: a row lock of another transaction).

Per run it prints: notifications/s achieved; statement time per notification p50 / p99 (ms); the busy share of
each second (statement time summed over committers / wall time); the overlap (share of the time at least two
statements are in flight); and the row-lock wait (sampled ms of waiting on another transaction's row lock per
second of wall time, summed over committers: what the serialization costs each second; other lock waits, i.e.
relation extension, apart). Compare ``same`` with ``disjoint`` at the same rate and committers.

    NOTIFLOW_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python loadtests/seq_contention.py

A figure, not a test; the last line is one JSON object. A fresh database is created, and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import asyncpg
from stores import fresh_database

from notiflow.ids import new_id
from notiflow.models import NewNotification
from notiflow.store import ingest as ingest_sql

# A row lock held by another transaction is waited on as that transaction's id (or the tuple); relation extension
# (two inserts growing one table) is a Lock wait too, but not the one in question: counted apart.
_WAITING = """
SELECT count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event IN ('transactionid', 'tuple')) AS row_locked,
       count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event NOT IN ('transactionid', 'tuple')) AS other
FROM pg_stat_activity WHERE pid = ANY($1::int[])
"""


class Committer:
    """One gateway's group commit: whatever queued while the last flush ran goes in the next one."""

    def __init__(self, conn: Any, retention_s: float) -> None:
        self.conn = conn
        self.retention_s = retention_s
        self.queue: list[tuple[NewNotification, float]] = []
        self.wake = asyncio.Event()
        self.spans: list[tuple[float, float, int]] = []  # (start, end, notifications) of each statement
        self.latencies: list[float] = []  # made -> committed, s

    async def run(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self.queue):
            if not self.queue:
                self.wake.clear()
                waiter = asyncio.ensure_future(self.wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            batch, self.queue = self.queue, []
            started = time.perf_counter()
            await ingest_sql.insert_notifications(self.conn, [n for n, _ in batch], self.retention_s)
            ended = time.perf_counter()
            self.spans.append((started, ended, len(batch)))
            self.latencies.extend(ended - made for _, made in batch)


async def sample(pool: asyncpg.Pool, pids: list[int], every_s: float, stop: asyncio.Event, out: list[float]) -> None:
    """Lock waiting, s summed over the committers (each sample's waiters times the time since the last sample):
    out[0] on row locks, out[1] on other locks (relation extension)."""
    async with pool.acquire() as conn:
        last = time.perf_counter()
        while not stop.is_set():
            row = await conn.fetchrow(_WAITING, pids)
            now = time.perf_counter()
            out[0] += int(row["row_locked"]) * (now - last)
            out[1] += int(row["other"]) * (now - last)
            last = now
            await asyncio.sleep(every_s)


def overlap_share(spans: list[tuple[float, float, int]], wall_s: float) -> float:
    """Share of the wall time during which at least two statements were in flight."""
    edges = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    inflight, last, both = 0, 0.0, 0.0
    for at, step in edges:
        if inflight >= 2:
            both += at - last
        inflight += step
        last = at
    return both / wall_s


async def one_run(dsn: str, args: argparse.Namespace, rate: float, committers: int, mode: str) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=committers + 1, max_size=committers + 1)
    assert pool is not None
    conns = [await pool.acquire() for _ in range(committers)]
    try:
        pids = [c.get_server_pid() for c in conns]
        workers = [Committer(c, 30 * 86400) for c in conns]
        groups = [[f"g{g}-u{i}" for i in range(args.users)] for g in range(args.groups)]
        stop, stop_sampler = asyncio.Event(), asyncio.Event()
        locked = [0.0, 0.0]
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        sampler = asyncio.create_task(sample(pool, pids, args.sample_ms / 1000, stop_sampler, locked))
        load0 = os.getloadavg()[0]
        started = time.perf_counter()
        total = int(rate * args.seconds)
        for i in range(total):
            due = started + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            users = groups[0] if mode == "same" else groups[i % args.groups]
            w = workers[i % committers]
            w.queue.append((NewNotification(new_id(), users, "seq.test", '{"n": 1}', None, None), time.perf_counter()))
            w.wake.set()
        stop.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
        stop_sampler.set()
        await sampler
    finally:
        for c in conns:
            await pool.release(c)
        await pool.close()
    spans = [s for w in workers for s in w.spans]
    per_notification = [(e - s) / n for s, e, n in spans for _ in range(n)]
    latencies = sorted(x for w in workers for x in w.latencies)
    busy = sum(e - s for s, e, _ in spans)
    result = {
        "mode": mode, "rate": rate, "committers": committers, "achieved_per_s": round(total / wall, 1),
        "statements": len(spans), "stmt_ms_p50": round(statistics.median(e - s for s, e, _ in spans) * 1000, 1),
        "stmt_ms_p99": round(sorted(e - s for s, e, _ in spans)[int(len(spans) * 0.99) - 1] * 1000, 1),
        "commit_latency_ms_p50": round(latencies[len(latencies) // 2] * 1000, 1),
        "commit_latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "busy_share": round(busy / wall, 3), "overlap_share": round(overlap_share(spans, wall), 3),
        "row_lock_wait_ms_per_s": round(locked[0] * 1000 / wall, 1),
        "other_lock_wait_ms_per_s": round(locked[1] * 1000 / wall, 1),
        "cost_ms_per_notification": round(statistics.mean(per_notification) * 1000, 2),
        "load1": round((load0 + os.getloadavg()[0]) / 2, 2),
    }  # fmt: skip
    print(
        f"{mode:<8} {rate:6.0f}/s x{committers} committers: {result['achieved_per_s']:6.1f}/s, "
        f"stmt p50 {result['stmt_ms_p50']:6.1f} p99 {result['stmt_ms_p99']:6.1f} ms, "
        f"commit p50 {result['commit_latency_ms_p50']:6.1f} p99 {result['commit_latency_ms_p99']:7.1f} ms, "
        f"busy {result['busy_share']:.2f}, overlap {result['overlap_share']:.2f}, "
        f"row-lock wait {result['row_lock_wait_ms_per_s']:6.1f} ms/s "
        f"(other locks {result['other_lock_wait_ms_per_s']:.1f}) (load {result['load1']})",
        flush=True,
    )
    return result


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    async with fresh_database("seqc") as db:
        # Every user has a seq row already: the steady state, not the first notification's inserts.
        users = [f"g{g}-u{i}" for g in range(args.groups) for i in range(args.users)]
        await db.conn.execute("INSERT INTO user_seqs (user_id, last_seq) SELECT unnest($1::text[]), 0", users)
        await db.conn.close()  # the runs measure the committers' connections only
        for rate in args.rates:
            for committers in args.committers:
                for mode in ("same", "disjoint"):
                    results.append(await one_run(db.url, args, rate, committers, mode))
    return results


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=float, nargs="+", default=[20, 50, 100], help="notifications per second")
    p.add_argument("--committers", type=int, nargs="+", default=[1, 2, 4], help="concurrent committers (gateways)")
    p.add_argument("--users", type=int, default=1000, help="recipients per notification")
    p.add_argument("--groups", type=int, default=8, help="disjoint groups of --users in the disjoint mode")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--sample-ms", type=float, default=2)
    return p.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))))
