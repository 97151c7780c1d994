"""Retry storm: does a dead downstream see a storm of retries? (SPEC I6: "a failing downstream never sees a
retry storm".)

It starts its own cluster (``DevStack``: one gateway, one stream worker, one retry worker, as separate
processes) and a webhook sink in this process that answers every request with 500. It POSTs
``--notifications`` notifications (one recipient each, ``webhook_url`` on the sink) while the stream
worker is stopped, starts it (so the downstream sees the backlog as one burst, at the rate the worker can
call it; ``--no-burst`` ingests with the worker running instead), then watches what the sink receives:

- the first-attempt rate: first attempts per second, from the first to the last first attempt;
- the retry rate: retries per second over ``--window-s`` seconds after the last first attempt, with the
  production backoff (base 1000 ms, cap 300000 ms, 5 retries) unless told otherwise;
- their ratio, the busiest second of retries, and the most attempts any delivery got (at most
  MAX_RETRIES + 1).

    python loadtests/retry_storm.py                       # 1000 notifications, 25 s window (~45 s in all)
    python loadtests/retry_storm.py --window-s 20 --base-ms 500

Redis and PostgreSQL are embedded (pip packages) unless ``NOTIFLOW_REDIS_URL`` / ``NOTIFLOW_DATABASE_URL``
are set; then the run uses a fresh database (dropped afterwards) and a fresh Redis key prefix (deleted
afterwards). Loopback only; every phase has a time bound. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import secrets
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr
from stores import Stores

from notiflow.config import Settings
from notiflow.devstack import DevStack, free_port

log = logging.getLogger("retry_storm")


# --- the dead downstream ------------------------------------------------------------------------------


@dataclass
class DeadSink:
    """HTTP/1.1 keep-alive server on 127.0.0.1 that answers 500 to everything and notes each arrival."""

    arrivals: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, webhook-id)
    port: int = 0
    _server: asyncio.Server | None = None
    _conns: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        body = b'{"error":"down"}'
        answer = (
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        try:
            for _ in range(1_000_000):  # keep-alive, bounded
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                if length:
                    await reader.readexactly(length)
                self.arrivals.append((time.monotonic(), headers.get("webhook-id", "")))
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()


# --- stores -------------------------------------------------------------------------------------------


# --- the run ------------------------------------------------------------------------------------------


async def ingest(base_url: str, sink_url: str, count: int, concurrency: int, deadline_s: float) -> int:
    """POST ``count`` notifications (one recipient each); returns how many got a 202."""
    accepted = 0
    todo = iter(range(count))
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + deadline_s

    async def producer(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        for i in todo:
            if loop.time() > stop_at:
                return
            body = {"user_id": f"storm-{i}", "event": "storm.test", "payload": {"i": i}, "webhook_url": sink_url}
            for _ in range(20):  # 429/503 are answers to come back later: bounded retries
                resp = await client.post("/notifications", json=body)
                if resp.status_code == 202:
                    accepted += 1
                    break
                if resp.status_code not in (429, 503):
                    raise RuntimeError(f"ingest answered {resp.status_code}: {resp.text[:200]}")
                await asyncio.sleep(float(resp.headers.get("retry-after", "1")))

    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as client:
        await asyncio.gather(*(producer(client) for _ in range(concurrency)))
    return accepted


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


async def run(args: argparse.Namespace) -> dict[str, object]:
    sink = DeadSink()
    await sink.start()
    stores = Stores("storm")
    stores.prepare()
    settings = Settings(
        redis_url=stores.redis_url,
        database_url=stores.database_url,
        key_prefix=stores.prefix,
        stream_key=f"{stores.prefix}:stream",
        max_retries=args.max_retries,
        retry_base_ms=args.base_ms,
        retry_cap_ms=args.cap_ms,
        webhook_allowed_hosts=[f"127.0.0.1:{sink.port}"],
        webhook_secret=SecretStr("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()),
        webhook_allow_private=True,  # the dead sink is on loopback
        log_level="WARNING",
    )
    stack = DevStack(settings, gateways=1, stream_workers=1, retry_workers=1, base_port=free_port())
    try:
        await asyncio.to_thread(stack.start)
        if args.burst:
            # Ingest with no stream worker, then start one: the downstream sees the backlog as one burst,
            # at the rate the worker can call it, not at the rate this machine can POST.
            await asyncio.to_thread(stack.kill, "stream-worker-0", signal.SIGTERM)
            for _ in range(300):
                if not stack.alive("stream-worker-0"):
                    break
                await asyncio.sleep(0.1)
        started = time.monotonic()
        accepted = await ingest(stack.gateway_urls[0], f"http://127.0.0.1:{sink.port}/hook", args.notifications,
                                args.concurrency, deadline_s=60)
        ingest_s = time.monotonic() - started
        if args.burst:
            await asyncio.to_thread(stack.start_process, "stream-worker-0")

        # First attempts: wait until every accepted delivery has reached the sink once (bounded).
        seen: set[str] = set()
        for _ in range(600):
            seen = {wid for _, wid in sink.arrivals}
            if len(seen) >= accepted:
                break
            await asyncio.sleep(0.1)
        firsts: dict[str, float] = {}
        for at, wid in sink.arrivals:
            firsts.setdefault(wid, at)
        first_start, first_end = min(firsts.values()), max(firsts.values())

        window_end = first_end + args.window_s
        await asyncio.sleep(max(0.0, window_end - time.monotonic()) + 0.05)
        arrivals = list(sink.arrivals)
    finally:
        await asyncio.to_thread(stack.stop)
        await sink.stop()
        stores.cleanup()

    first_phase_s = first_end - first_start
    nth: Counter[str] = Counter()
    retries_in_window: list[float] = []
    retries_during_first_phase = 0
    for at, wid in arrivals:
        nth[wid] += 1
        if nth[wid] == 1:
            continue
        if at <= first_end:
            retries_during_first_phase += 1
        elif at <= window_end:
            retries_in_window.append(at)
    per_second = Counter(int(at - first_end) for at in retries_in_window)
    firsts_per_second = Counter(int(at - first_start) for at in firsts.values())
    first_rate = rate(len(firsts), first_phase_s)
    retry_rate = rate(len(retries_in_window), args.window_s)
    attempts = Counter(nth.values())
    return {
        "notifications": args.notifications,
        "accepted": accepted,
        "ingest_s": round(ingest_s, 2),
        "burst": args.burst,
        "backoff": {"base_ms": args.base_ms, "cap_ms": args.cap_ms, "max_retries": args.max_retries},
        "first_attempts": len(firsts),
        "first_attempt_phase_s": round(first_phase_s, 3),
        "first_attempt_rate_per_s": round(first_rate, 1),
        "first_attempts_per_second": [firsts_per_second.get(i, 0) for i in range(int(first_phase_s) + 1)],
        "retries_during_first_phase": retries_during_first_phase,
        "window_s": args.window_s,
        "retries_in_window": len(retries_in_window),
        "retry_rate_per_s": round(retry_rate, 1),
        "retry_to_first_ratio": round(retry_rate / first_rate, 4) if first_rate else None,
        "busiest_retry_second_per_s": max(per_second.values(), default=0),
        "retries_per_second": [per_second.get(s, 0) for s in range(int(args.window_s))],
        "deliveries_by_attempts_seen": dict(sorted(attempts.items())),
        "max_attempts_per_delivery": max(nth.values(), default=0),
        "attempt_bound": args.max_retries + 1,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notifications", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32, help="concurrent POSTs while ingesting")
    p.add_argument("--window-s", type=float, default=25.0, help="retry measurement window after the first attempts")
    p.add_argument("--base-ms", type=int, default=1000)
    p.add_argument("--cap-ms", type=int, default=300_000)
    p.add_argument("--max-retries", type=int, default=5)
    p.add_argument("--no-burst", dest="burst", action="store_false",
                   help="ingest while the stream worker runs (first attempts then follow the ingest rate)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    per_second = result["retries_per_second"]
    print(f"first attempts    {result['first_attempts']} in {result['first_attempt_phase_s']} s"
          f"  = {result['first_attempt_rate_per_s']} req/s")
    print(f"firsts per s      {result['first_attempts_per_second']}")
    print(f"retries           {result['retries_in_window']} in the {result['window_s']} s after"
          f"  = {result['retry_rate_per_s']} req/s (busiest second {result['busiest_retry_second_per_s']})")
    print(f"retry / first     {result['retry_to_first_ratio']}")
    print(f"retries per s     {per_second}")
    print(f"attempts seen     {result['deliveries_by_attempts_seen']} (bound {result['attempt_bound']})")
    print(json.dumps(result))
    return 0 if result["max_attempts_per_delivery"] <= result["attempt_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
