"""notiflow load benchmark: ingest throughput, live delivery throughput and end-to-end latency.

It starts its own cluster (``notiflow.devstack.DevStack``), opens WebSocket clients that acknowledge what
they receive, runs closed-loop producers that POST notifications for a fixed duration, waits (bounded) for
stragglers, and prints a compact table and, as its last line, one JSON object with every figure.

    python loadtests/bench.py                                   # 1 gateway, 200 sockets, 32 producers, 20 s
    python loadtests/bench.py --gateways 2 --stream-workers 2   # routing across nodes
    python loadtests/bench.py --fanout 50 --producers 8         # 50 recipients per notification
    python loadtests/bench.py --offline-share 0.2               # a fifth of the recipients never connect
    python loadtests/bench.py --ingest-only --stream-workers 0  # raw ingest: no sockets, no delivery work

Redis and PostgreSQL are embedded (pip packages) unless ``NOTIFLOW_REDIS_URL`` / ``NOTIFLOW_DATABASE_URL``
are set; then the run uses a fresh database (dropped afterwards) and a fresh Redis key prefix (deleted
afterwards). Only loopback addresses are used, and every phase has a time bound.

Client and server share the machine, so the run also reports the CPU each side used, read from
``/proc/<pid>/stat`` of the stack's processes (whole process trees: PostgreSQL's backends included).
Latency is measured from just before the POST (``e2e``) and from the 202 (``after_202``) to the frame's
arrival at the client; producers are closed-loop, so latencies are those of the offered load the server
sustained (no coordinated-omission correction).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from pathlib import Path

from stores import Stores

from notiflow.config import Settings
from notiflow.devstack import DevStack, free_port_range

from .producers import runner as loop_runner
from .run import run
from .tables import print_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateways", type=int, default=1)
    p.add_argument("--stream-workers", type=int, default=1)
    p.add_argument("--retry-workers", type=int, default=1)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    p.add_argument("--sockets", type=int, default=200, help="WebSocket clients, users u0..uN-1 (default 200)")
    p.add_argument("--producers", type=int, default=32, help="concurrent closed-loop producers (default 32)")
    p.add_argument("--recipients", type=int, default=1, help="user_ids per notification (default 1)")
    p.add_argument("--fanout", type=int, default=0, help="fan-out mode: N user_ids per notification")
    p.add_argument("--batch", type=int, default=1,
                   help="notifications per request (POST /notifications/batch when over 1; default 1)")
    p.add_argument("--offline-share", type=float, default=0.0, help="share of recipients that never connect")
    p.add_argument("--offline-users", type=int, default=1000, help="size of the never-connected user pool")
    p.add_argument("--ingest-only", action="store_true", help="no sockets: raw ingest throughput")
    p.add_argument("--client-procs", type=int, default=1, help="processes running the producers (default 1: this one)")
    p.add_argument("--rate", type=float, default=0.0, help="cap on total POSTs/s (default: closed loop, no cap)")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="bound on the wait for stragglers, s")
    p.add_argument("--request-timeout", type=float, default=10.0)
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--redis-cluster", type=int, default=0, metavar="MASTERS",
                   help="run the stack on a Redis Cluster: an embedded one of MASTERS masters with a replica each, or "
                        "NOTIFLOW_REDIS_URL as its seed (docs/cluster.md)")
    p.add_argument("--log-level", default="WARNING", help="NOTIFLOW_LOG_LEVEL of the stack (default WARNING)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra NOTIFLOW_* for the stack")
    p.add_argument("--profile", metavar="DIR", help="py-spy raw profiles of gateways and stream workers into DIR")
    p.add_argument("--workdir", metavar="DIR", help="keep the stack's logs in DIR (default: a temp dir, removed)")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON figures to FILE")
    args = p.parse_args(argv)
    if args.gateways < 1 or args.producers < 1 or args.duration <= 0:
        p.error("--gateways and --producers must be >= 1, --duration > 0")
    if not 0.0 <= args.offline_share <= 1.0:
        p.error("--offline-share is a fraction in [0, 1]")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stores = Stores("bench")
    extra_env = {
        "NOTIFLOW_KEY_PREFIX": stores.prefix,
        "NOTIFLOW_STREAM_KEY": f"{stores.prefix}:stream",
        "NOTIFLOW_LOG_LEVEL": args.log_level,
    }
    for item in args.env:
        name, _, value = item.partition("=")
        extra_env[name] = value
    # Stop cleanly on SIGTERM too (the stack's children die with us anyway, but the stores need cleanup).
    signal.signal(signal.SIGTERM, _interrupt)
    stores.prepare()
    settings = Settings(redis_url=stores.redis_url, database_url=stores.database_url)
    stack = DevStack(
        settings,
        gateways=args.gateways,
        stream_workers=args.stream_workers,
        retry_workers=args.retry_workers,
        base_port=free_port_range(args.gateways),
        extra_env=extra_env,
        workdir=Path(args.workdir) if args.workdir else None,
        redis_cluster=args.redis_cluster,
    )
    t0 = time.monotonic()
    try:
        stack.start()
        print(f"stack up in {time.monotonic() - t0:.1f}s: {', '.join(stack.gateway_urls)} (logs {stack.log_dir})",
              flush=True)  # fmt: skip
        runner = loop_runner()
        budget = args.connect_timeout + args.duration + args.request_timeout + args.drain_timeout + 60
        result = runner(asyncio.wait_for(run(args, stack, stack.database_url), budget))
    finally:
        stack.stop()
        stores.cleanup()
    result["loadgen_loop"] = "asyncio" if runner is asyncio.run else "uvloop"
    print_table(result)
    line = json.dumps(result, sort_keys=True)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line, flush=True)
    return 0 if result["missing"] == 0 and not result["acks_dropped"] else 1
