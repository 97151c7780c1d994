"""``python -m chaos.toxiproxy``: run the Toxiproxy-compatible server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .api import VERSION, ToxiproxyServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos.toxiproxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address the HTTP API listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8474, help="port of the HTTP API (default 8474, 0: any free)")
    return parser.parse_args(argv)


async def run(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with ToxiproxyServer(host, port) as server:
        # One line on stdout once the API accepts connections: whoever started us may wait for it.
        print(f"toxiproxy {VERSION} API listening on {server.host}:{server.port}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        asyncio.run(run(args.host, args.port))
    except OSError as exc:
        print(f"toxiproxy: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
