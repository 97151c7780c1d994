"""A notiflow DevStack for the JS client's tests: embedded Redis and PostgreSQL, N gateways, one worker each.

Prints one JSON line ``{"urls": [...]}`` once every gateway is ready, then obeys commands on stdin, one
a line, each answered with a JSON line: ``kill NAME`` (SIGKILL, e.g. ``kill gateway-0``), ``start NAME``,
``quit``. It stops everything when stdin closes, so a test that dies leaves nothing running.

Run with the venv's python: ``.venv/bin/python clients/js/test/stack.py --gateways 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from notiflow.config import Settings
from notiflow.devstack import DevStack, DevStackError, EmbeddedPostgres, EmbeddedRedis, free_port_range


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateways", type=int, default=2)
    args = parser.parse_args()
    with contextlib.ExitStack() as cleanup:
        # The stores first, so that their ports are taken before the gateways' range is chosen.
        redis = cleanup.enter_context(EmbeddedRedis())
        postgres = cleanup.enter_context(EmbeddedPostgres())
        # Short presence TTL: users of a killed node count as offline quickly (the tests kill nodes).
        settings = Settings(redis_url=redis.url, database_url=postgres.url, presence_ttl_s=2, retry_base_ms=50,
                            retry_cap_ms=500, reclaim_idle_ms=1000, shutdown_grace_s=2, log_level="WARNING")
        for attempt in range(3):  # the machine is shared: a free port may be taken before a gateway binds it
            stack = DevStack(settings, gateways=args.gateways, base_port=free_port_range(args.gateways))
            try:
                stack.start()
                break
            except DevStackError:
                if attempt == 2:
                    raise
        cleanup.callback(stack.stop)
        serve(stack)
    return 0


def serve(stack: DevStack) -> None:
    print(json.dumps({"urls": stack.gateway_urls}), flush=True)
    for line in sys.stdin:
        verb, _, name = line.strip().partition(" ")
        if verb == "kill":
            stack.kill(name)
        elif verb == "start":
            stack.start_process(name)
        elif verb == "quit":
            break
        print(json.dumps({"done": line.strip()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
