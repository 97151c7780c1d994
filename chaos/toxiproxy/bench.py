"""What the proxy itself costs: ``python -m chaos.toxiproxy.bench [--trips N] [--mb N]``.

Starts ``python -m chaos.toxiproxy`` as a child process (as the chaos suite does) and an echo server in this one,
and prints, direct and through a proxy with no toxic: round trips of 64 bytes on one connection (per second, p50,
p99) and bulk echo throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # python -m chaos.toxiproxy runs from the repository root


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def round_trips(port: int, trips: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload, seconds = b"x" * 64, []
    for _ in range(trips):
        started = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        await reader.readexactly(len(payload))
        seconds.append(time.perf_counter() - started)
    writer.close()
    return seconds


async def bulk_mb_s(port: int, megabytes: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    block, total = b"y" * 65536, megabytes * 1024 * 1024

    async def send() -> None:
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()

    started = time.perf_counter()
    sender = asyncio.create_task(send())
    received = 0
    while received < total:
        received += len(await reader.read(1 << 20))
    await sender
    writer.close()
    return megabytes / (time.perf_counter() - started)


def _row(label: str, seconds: list[float], mb_s: float) -> str:
    cut = statistics.quantiles(seconds, n=100)
    return f"{label:<8} {len(seconds) / sum(seconds):>10.0f} {cut[49] * 1e6:>9.0f} {cut[98] * 1e6:>9.0f} {mb_s:>8.0f}"


def _create_proxy(api: str, upstream: str) -> int:
    body = json.dumps({"name": "bench", "upstream": upstream}).encode()
    request = urllib.request.Request(f"{api}/proxies", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.load(response)["listen"].rsplit(":", 1)[1])


async def main(trips: int, megabytes: int) -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = int(echo.sockets[0].getsockname()[1])
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chaos.toxiproxy", "--port", "0",
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        api = "http://" + (await server.stdout.readline()).decode().rsplit(" ", 1)[1].strip()
        proxy_port = await asyncio.to_thread(_create_proxy, api, f"127.0.0.1:{echo_port}")
        print(f"{'path':<8} {'trips/s':>10} {'p50 µs':>9} {'p99 µs':>9} {'MB/s':>8}")
        for label, port in (("direct", echo_port), ("proxy", proxy_port)):
            seconds = await round_trips(port, trips)
            print(_row(label, seconds, await bulk_mb_s(port, megabytes)))
    finally:
        server.terminate()
        await server.wait()
        echo.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m chaos.toxiproxy.bench", description=__doc__)
    parser.add_argument("--trips", type=int, default=5000, help="round trips per path (default 5000)")
    parser.add_argument("--mb", type=int, default=64, help="megabytes echoed per path (default 64)")
    args = parser.parse_args()
    asyncio.run(main(args.trips, args.mb))
