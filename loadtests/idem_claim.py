"""The idempotency key claim, before and after migration 013: one table with a unique (scope, key), claimed by one
INSERT ... ON CONFLICT, against day partitions claimed by ``notiflow_claim_keys`` (one call: the INSERT ... ON
CONFLICT of each key on its day, then of its guard on the next day).

Two fresh databases on one server: ``before`` migrated up to 012 and claimed with main's statement (kept here
verbatim), ``after`` migrated to head and claimed through ``store.ingest.claim_idempotency_keys``. Each is first
filled with ``--preload`` keys (a day's worth of keyed requests, half of them claimed yesterday; in ``after``
each on its day and guarded on the next, as claims store them), then the phases alternate between the two
databases, ``--rounds`` times each:

- ``new``: batches of ``--batch`` fresh keys (the gateway's batches), each in its transaction as the service runs
  it (BEGIN, claim, COMMIT);
- ``repeat``: the same keys again (all lost: the claim, then the read of the holders' responses).

It prints µs of backend CPU (``/proc/<pg_backend_pid()>/stat``; PostgreSQL must run on this machine) and of wall
time per key, the median over the rounds. A figure, not a test; the last line is one JSON object.

    NOTIFLOW_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python loadtests/idem_claim.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from typing import Any

from backend_cpu import backend_cpu_s
from stores import FreshDatabase, fresh_database

from notiflow.models import NewNotification
from notiflow.store import ingest as ingest_sql

# main's claim before 013, verbatim.
OLD_CLAIM = """
INSERT INTO idempotency_keys AS k (scope, key, request_hash, notification_id, response)
SELECT scope, key, hash, nid, resp
FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::jsonb[]) AS t(scope, key, hash, nid, resp)
ORDER BY scope, key
ON CONFLICT (scope, key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, notification_id = EXCLUDED.notification_id,
        response = EXCLUDED.response, created_at = now()
    WHERE k.created_at < now() - make_interval(secs => $6)
RETURNING scope, key
"""
OLD_EXISTING = """
SELECT k.scope, k.key, k.request_hash, k.response
FROM idempotency_keys k JOIN unnest($1::text[], $2::text[]) AS t(scope, key) USING (scope, key)
"""
PRELOAD = """
INSERT INTO idempotency_keys (scope, key, request_hash, notification_id, response, created_at)
SELECT 'key:' || (g % 50), 'pre-' || g, md5(g::text), gen_random_uuid(), '{"id": "x", "status": "accepted"}',
       now() - (g % 2) * (extract(hour FROM now()) + 1) * interval '1 hour'
FROM generate_series(1, $1) g
"""
# After 013 every key is stored on its day and guarded on the next, as claims write them.
PRELOAD_AFTER = """
WITH k AS (
    SELECT g, now() - (g % 2) * (extract(hour FROM now()) + 1) * interval '1 hour' AS at
    FROM generate_series(1, $1) g
)
INSERT INTO idempotency_keys (scope, key, request_hash, notification_id, response, created_at, day)
SELECT 'key:' || (g % 50), 'pre-' || g, md5(g::text), gen_random_uuid(), '{"id": "x", "status": "accepted"}', at,
       (at AT TIME ZONE 'UTC')::date + d
FROM k CROSS JOIN generate_series(0, 1) d
"""
WINDOW_S = 86_400


def batch(n: int) -> list[NewNotification]:
    return [
        NewNotification(
            uuid.uuid4(), ["u"], "e", "{}", None, None, idempotency_key=f"k-{uuid.uuid4().hex}",
            idempotency_scope=f"key:{i % 50}", request_hash=uuid.uuid4().hex,
        )
        for i in range(n)
    ]


async def old_claim(conn: Any, items: list[NewNotification]) -> None:
    rows = await conn.fetch(
        OLD_CLAIM,
        [i.idempotency_scope for i in items],
        [i.idempotency_key for i in items],
        [i.request_hash for i in items],
        [i.id for i in items],
        [json.dumps(ingest_sql.accepted_body(i)) for i in items],
        float(WINDOW_S),
    )
    if len(rows) < len(items):
        won = {(r["scope"], r["key"]) for r in rows}
        lost = [i for i in items if (i.idempotency_scope, i.idempotency_key) not in won]
        await conn.fetch(OLD_EXISTING, [i.idempotency_scope for i in lost], [i.idempotency_key for i in lost])


async def new_claim(conn: Any, items: list[NewNotification]) -> None:
    await ingest_sql.claim_idempotency_keys(conn, items, WINDOW_S)


async def timed(conn: Any, pid: int, claim: Any, batches: list[list[NewNotification]]) -> tuple[float, float]:
    """µs of backend CPU and of wall time per key over ``batches``, each claimed in its own transaction."""
    keys = sum(len(b) for b in batches)
    cpu0, wall0 = backend_cpu_s(pid), time.perf_counter()
    for items in batches:
        async with conn.transaction():
            await claim(conn, items)
    return (backend_cpu_s(pid) - cpu0) / keys * 1e6, (time.perf_counter() - wall0) / keys * 1e6


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        dbs: dict[str, FreshDatabase] = {}
        for name, upto, preload in (("before", "012", PRELOAD), ("after", None, PRELOAD_AFTER)):
            db = dbs[name] = await stack.enter_async_context(fresh_database(f"idem{name}", upto=upto))
            await db.conn.execute(preload, args.preload)
            await db.conn.execute("VACUUM ANALYZE")
        claims = {"before": old_claim, "after": new_claim}
        samples: dict[str, list[tuple[float, float]]] = {f"{n} {p}": [] for p in ("new", "repeat") for n in dbs}
        for _ in range(args.rounds):
            for name, db in dbs.items():
                batches = [batch(args.batch) for _ in range(args.batches)]
                samples[f"{name} new"].append(await timed(db.conn, db.meter.pid, claims[name], batches))
                samples[f"{name} repeat"].append(await timed(db.conn, db.meter.pid, claims[name], batches))
        result: dict[str, Any] = {"batch": args.batch, "preload": args.preload, "load1": os.getloadavg()[0]}
        for phase, xs in samples.items():
            cpu, wall = statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)
            result[phase] = {"us_cpu_per_key": round(cpu, 2), "us_wall_per_key": round(wall, 2)}
            print(f"{phase:<14} {cpu:7.2f} µs CPU {wall:7.2f} µs wall per key (median of {len(xs)} rounds)")
        print(f"batch {args.batch}, {args.preload} keys preloaded, load {os.getloadavg()}")
        return result


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100, help="keys per claim (per ingest batch)")
    p.add_argument("--batches", type=int, default=20, help="claims per phase and round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--preload", type=int, default=200_000, help="keys in the table before the phases")
    return p.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))))
