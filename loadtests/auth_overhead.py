"""What authentication costs on the ingest path: POST /notifications with auth off, with a bootstrap key
(checked in memory) and with a stored API key (looked up in PostgreSQL on every request, never cached).

    python loadtests/auth_overhead.py                        # 3000 requests per pass, 32 in flight
    python loadtests/auth_overhead.py --requests 10000 --concurrency 64 --rounds 3

One gateway and no workers (the stream just grows), embedded stores, loopback only. Each round runs every
mode once, in turn, so drift on a shared machine spreads over all of them; the table shows the median
round. Closed loop: latencies are those of the load the gateway sustained.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from typing import Any

import httpx

from notiflow.config import Settings
from notiflow.devstack import DevStack, free_port_range


async def _pass(url: str, headers: dict[str, str], requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as http:

        async def producer() -> None:
            for i in counter:
                body = {"user_id": f"bench-{i % 500}", "event": "auth.bench", "payload": {"i": i}}
                started = time.perf_counter()
                try:
                    r = await http.post(f"{url}/notifications", json=body, headers=headers)
                except httpx.TransportError:
                    # A keep-alive connection the server closed as it was reused (uvicorn's 5 s idle
                    # timeout, reached on a saturated machine): counted, and sent again on a fresh one.
                    errors.append(1)
                    r = await http.post(f"{url}/notifications", json=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if r.status_code != 202:
                    raise SystemExit(f"unexpected {r.status_code}: {r.text}")

        began = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(concurrency)))
        took = time.perf_counter() - began
    latencies.sort()
    return {"rps": requests / took, "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "resent": float(len(errors))}


def _stack(env: dict[str, str]) -> DevStack:
    settings = Settings(stream_max_backlog=10**9, log_level="WARNING")
    return DevStack(settings, gateways=1, stream_workers=0, retry_workers=0, base_port=free_port_range(1),
                    extra_env=env)


async def _create_key(url: str, admin: str) -> str:
    async with httpx.AsyncClient(trust_env=False) as http:
        r = await http.post(f"{url}/keys", json={"name": f"bench-{secrets.token_hex(3)}", "scopes": ["send"]},
                            headers={"authorization": f"Bearer {admin}"})
        r.raise_for_status()
        return str(r.json()["key"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    admin = f"bench-admin-{secrets.token_hex(8)}"
    results: dict[str, list[dict[str, float]]] = {"auth off": [], "bootstrap key": [], "stored API key": []}
    # Two stacks side by side (auth off / on), each with its own embedded stores.
    with _stack({"NOTIFLOW_AUTH": "off"}) as off, _stack({"NOTIFLOW_API_KEYS": admin}) as on:
        url_off, url_on = off.gateway_urls[0], on.gateway_urls[0]
        stored = asyncio.run(_create_key(url_on, admin))
        modes: dict[str, tuple[str, dict[str, str]]] = {
            "auth off": (url_off, {}),
            "bootstrap key": (url_on, {"authorization": f"Bearer {admin}"}),
            "stored API key": (url_on, {"authorization": f"Bearer {stored}"}),
        }
        for url, headers in modes.values():  # warm-up: connections, pools, the gateway's first batches
            asyncio.run(_pass(url, headers, min(500, args.requests), args.concurrency))
        for _ in range(args.rounds):
            for mode, (url, headers) in modes.items():
                results[mode].append(asyncio.run(_pass(url, headers, args.requests, args.concurrency)))
    print(f"{args.requests} POST /notifications per pass, {args.concurrency} in flight, median of {args.rounds}")
    print(f"{'mode':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'resent':>7}")
    for mode, runs in results.items():
        med: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{mode:<16} {med['rps']:>8.0f} {med['p50_ms']:>8.1f} {med['p99_ms']:>8.1f} {med['resent']:>7.0f}")


if __name__ == "__main__":
    main()
