"""What the stream worker's presence lookup costs for one fan-out: ``Presence.live_nodes`` of ``--users`` users,
each with a socket on one of ``--nodes`` live gateway nodes, through notiflow's own adapter (streams/presence.py).

Prints, over ``--calls`` lookups after a warm-up, the time per lookup as the worker sees it (script call, reply,
the dict it builds) and Redis's own CPU per lookup (``INFO commandstats``: the script's usec per call, which
includes every command it runs). Redis runs its commands on one core: the second figure is what a fan-out's
lookup takes from the shard everyone shares.

    NOTIFLOW_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python loadtests/presence_lookup.py
    .venv/bin/python loadtests/presence_lookup.py --users 1000 --nodes 2     # an embedded Redis

Keys live under a prefix of this run's own, removed at the end; no other key is touched. The counters of
``INFO commandstats`` are reset (``CONFIG RESETSTAT``): on a Redis that serves anything else, run it elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from stores import Stores

from notiflow.config import Settings
from notiflow.streams.client import close_redis, connect_redis
from notiflow.streams.presence import Presence


async def _measure(url: str, prefix: str, args: argparse.Namespace) -> tuple[float, float]:
    settings = Settings(redis_url=url, key_prefix=prefix)
    redis = connect_redis(url)
    try:
        presence = Presence(redis, settings)
        nodes = [f"gw-{i}" for i in range(args.nodes)]
        for node in nodes:
            await presence.heartbeat(node, {})
        users = [f"u{i}" for i in range(args.users)]
        for i, user in enumerate(users):
            await presence.connect(nodes[i % len(nodes)], user)
        for _ in range(20):
            await presence.live_nodes(users)
        await redis.config_resetstat()
        start = time.perf_counter()
        for _ in range(args.calls):
            found = await presence.live_nodes(users)
        wall_ms = (time.perf_counter() - start) / args.calls * 1000
        assert all(found[u] for u in users), "a user with a live socket was not found"
        stats = await redis.info("commandstats")
        return wall_ms, float(stats["cmdstat_evalsha"]["usec_per_call"])
    finally:
        await close_redis(redis, 5.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1000, help="users per lookup (a fan-out's recipients; default 1000)")
    p.add_argument("--nodes", type=int, default=2, help="live gateway nodes the users' sockets are spread over")
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    stores = Stores("presence")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        try:
            url = stores.redis(stack, Path(tmp))
            wall_ms, redis_us = asyncio.run(_measure(url, stores.prefix, args))
        finally:
            stores.cleanup()
    print(f"presence lookup of {args.users} users on {args.nodes} nodes: {wall_ms:.2f} ms per lookup (worker side), "
          f"{redis_us / 1000:.2f} ms of Redis CPU per lookup")


if __name__ == "__main__":
    main()
