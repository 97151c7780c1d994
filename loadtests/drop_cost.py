"""Where the time of ``DROP TABLE`` goes: a table of ``--mib`` MiB (heap and an index) dropped with its pages
dirty in the OS page cache (just written), clean in it (CHECKPOINT + sync), or not cached at all (CHECKPOINT,
sync, drop_caches: a partition a retention period old). For the dropping backend: wall time, time on a CPU and
waiting for one (/proc/<pid>/schedstat), the rest asleep (I/O); and its file calls' time (``strace -c -w``).
``--indexes-first`` drops the index in a statement of its own before the table.

    sudo python loadtests/drop_cost.py --mib 1024            # root, on the database server's machine

PostgreSQL at NOTIFLOW_DATABASE_URL (a fresh database is created there and dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import page_cache
from stores import Stores

# About 140 bytes a row at fillfactor 50, deliveries-like: ~3,800 rows a MiB with the index.
_MAKE = """
CREATE TABLE {t} WITH (fillfactor = 50, autovacuum_enabled = false){space} AS
SELECT g AS id, 'user-' || (g % 1000) AS user_id, md5(g::text) AS a, md5((g + 1)::text) AS b, now() AS at
FROM generate_series(1, $1::bigint) AS g
"""


def schedstat(pid: int) -> tuple[float, float]:
    """(s on a CPU, s waiting for one) of a process."""
    run, wait, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(run) / 1e9, int(wait) / 1e9


async def one(conn: Any, state: str, args: argparse.Namespace) -> dict[str, Any]:
    t, space = f"drop_cost_{state}", f" TABLESPACE {args.tablespace}" if args.tablespace else ""
    await conn.execute(f"DROP TABLE IF EXISTS {t}")
    await conn.execute(_MAKE.format(t=t, space=space), args.mib * 3800, timeout=3600)
    await conn.execute(f"CREATE INDEX {t}_idx ON {t} (user_id, id){space}", timeout=3600)
    files = await page_cache.relation_files(conn, [t])
    if state == "clean":
        await conn.execute("CHECKPOINT", timeout=3600)
        await asyncio.to_thread(os.sync)
    elif state == "cold":
        await page_cache.evict(conn, files)
    cached = await asyncio.to_thread(page_cache.cached_mib, files)
    dirty = page_cache.dirty_mib()
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    tracer = None
    if args.strace:
        tracer = await asyncio.create_subprocess_exec(
            "strace", "-c", "-w", "-e", "trace=truncate,ftruncate,unlink,fsync,fdatasync", "-p", str(pid),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)
    statements = [f"DROP INDEX {t}_idx", f"DROP TABLE {t}"] if args.indexes_first else [f"DROP TABLE {t}"]
    run0, wait0 = schedstat(pid)
    timed = []
    for statement in statements:
        started = time.perf_counter()
        await conn.execute(statement)
        timed.append((statement, round(1000 * (time.perf_counter() - started), 1)))
    run1, wait1 = schedstat(pid)
    wall = sum(ms for _, ms in timed)
    out: dict[str, Any] = {
        "state": state, "cached_size_mib": cached, "dirty_mib_before": dirty, "statements_ms": timed,
        "wall_ms": wall, "on_cpu_ms": round(1000 * (run1 - run0), 1), "runqueue_ms": round(1000 * (wait1 - wait0), 1),
    }
    out["asleep_ms"] = round(wall - out["on_cpu_ms"] - out["runqueue_ms"], 1)
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        out["strace"] = (await tracer.communicate())[1].decode()
    return out


async def run(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [await one(conn, state, args) for _ in range(args.repeat) for state in args.states.split(",")]
    finally:
        await conn.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=1024, help="about how big the table and its index are")
    p.add_argument("--states", default="dirty,clean,cold")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--indexes-first", action="store_true", help="DROP INDEX, then DROP TABLE")
    p.add_argument("--strace", action="store_true", help="strace -c -w the backend's file calls")
    p.add_argument("--tablespace", help="create the table (and index) in this existing tablespace")
    args = p.parse_args()
    stores = Stores("dropcost")
    if not stores.admin_db:
        raise SystemExit("set NOTIFLOW_DATABASE_URL: the server's files must be on this machine")
    try:
        stores.prepare()
        assert stores.database_url is not None
        results = asyncio.run(run(stores.database_url, args))
    finally:
        stores.cleanup()
    for r in results:
        print(f"{r['state']:5}  cached/size MiB {r['cached_size_mib']}  dirty MiB {r['dirty_mib_before']:7.1f}  "
              f"DROP {r['wall_ms']:7.1f} ms = on CPU {r['on_cpu_ms']:6.1f} + run queue {r['runqueue_ms']:6.1f} "
              f"+ asleep {r['asleep_ms']:6.1f}  {r['statements_ms']}")
        if r.get("strace"):
            print("\n".join(line for line in r["strace"].splitlines() if not line.startswith("strace:")))
    print(f"load average {os.getloadavg()}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
