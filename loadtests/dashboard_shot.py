"""Screenshot of the live dashboard under load, for docs/dashboard.png.

Starts its own stack (embedded stores, 2 gateways, 1 stream worker, 1 retry worker), connects WebSocket
clients that acknowledge what they get, sends notifications at a steady rate (a few with a webhook to a
downstream that fails, so that the DLQ and the retry schedule have something in them), opens
``/dashboard`` in headless Chromium (Debian's, driven by Playwright) and takes the screenshot once the
charts have filled. Loopback only; every phase is bounded in time.

    python loadtests/dashboard_shot.py --rate 100 --points 90 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import time
from pathlib import Path

import httpx
import orjson
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect

from notiflow.config import Settings
from notiflow.devstack import DevStack, free_port, free_port_range

SECRET = SecretStr("whsec_" + base64.b64encode(b"dashboard-test-secret-32-bytes!!").decode())
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def client(url: str, stop: asyncio.Event) -> None:
    async with connect(url, proxy=None) as ws:
        await consume(ws, stop)


async def consume(ws: ClientConnection, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 1.0))
        except TimeoutError:
            continue
        if frame.get("type") == "notification":
            await ws.send(orjson.dumps({"type": "ack", "ids": [frame["id"]]}).decode())


async def produce(
    gateways: list[str], users: list[str], rate: float, duration_s: float, dead_hook: str, stop: asyncio.Event
) -> int:
    """Paced producers (closed loop: a slow gateway slows them down rather than piling requests up)."""
    workers = 16
    sent = 0
    async with httpx.AsyncClient(trust_env=False, timeout=30, limits=httpx.Limits(max_connections=workers)) as http:
        deadline = time.monotonic() + duration_s

        async def producer(k: int) -> None:
            nonlocal sent
            due = time.monotonic() + k / rate
            while due < deadline and not stop.is_set():
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                body: dict[str, object] = {"user_id": random.choice(users), "event": "order.shipped",
                                           "payload": {"n": sent}}
                if sent % 97 == 0:
                    body["webhook_url"] = dead_hook
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.post(random.choice(gateways) + "/notifications", json=body)).status_code == 202:
                        sent += 1
                due += workers / rate

        await asyncio.gather(*(producer(k) for k in range(workers)))
    return sent


async def shoot(url: str, out: Path, points: int, chromium: str) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        t0 = time.monotonic()
        browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
        # bypass_csp: wait_for_function evaluates a string, which the page's CSP forbids (no unsafe-eval).
        page = await browser.new_page(viewport={"width": 1440, "height": 1100}, bypass_csp=True)
        await page.goto(url)
        print(f"page open after {time.monotonic() - t0:.1f} s", flush=True)
        # Once the charts hold ``points`` seconds of figures (the page polls every second), bounded.
        await page.wait_for_function(f"series.stream.length >= {points}", timeout=300_000, polling=1000)
        print(f"{points} points after {time.monotonic() - t0:.1f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(out), full_page=True)
        print("screenshot taken", flush=True)
        await browser.close()


async def run(args: argparse.Namespace) -> None:
    dead = free_port()  # nothing listens there: those webhooks retry, then reach the DLQ
    settings = Settings(webhook_allowed_hosts=[f"127.0.0.1:{dead}"], webhook_secret=SECRET,
                        webhook_allow_private=True, max_retries=2, retry_base_ms=2000, retry_cap_ms=10_000,
                        log_level="WARNING")
    with DevStack(settings, gateways=2, stream_workers=1, retry_workers=1, base_port=free_port_range(2)) as dev:
        users = [f"user-{i}" for i in range(args.users)]
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(client(f"{dev.gateway_urls[i % 2].replace('http', 'ws')}/ws/{u}", stop))
            for i, u in enumerate(users)
        ]
        await asyncio.sleep(1)
        load = asyncio.create_task(produce(dev.gateway_urls, users, args.rate, args.duration,
                                           f"http://127.0.0.1:{dead}/hook", stop))
        print("load started", flush=True)
        try:
            await shoot(f"{dev.gateway_urls[0]}/dashboard", args.out, args.points, args.chromium)
        finally:
            stop.set()
        sent = await load
        for task in clients:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*clients, return_exceptions=True)
        print(f"{sent} notifications accepted; screenshot in {args.out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=300, help="notifications per second")
    p.add_argument("--duration", type=float, default=300, help="longest load, s (it stops at the shot)")
    p.add_argument("--points", type=int, default=90, help="seconds of figures on the charts at the shot")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    p.add_argument("--chromium", default="/usr/bin/chromium")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
