"""Topic fan-out: a topic of 100,000 subscribers, N of them online by WebSocket, S notifications sent to it.

It starts its own cluster (``DevStack``: gateways, stream workers and a retry worker as separate processes),
subscribes ``--subscribers`` users to one topic through the API (``PUT /topics/{topic}/subscribers/{user}``,
``--concurrency`` at a time; ``--bulk`` writes the subscriptions in one SQL statement per 10,000 instead,
through ``notiflow.store.topics.subscribe_many``: a load-test shortcut, not an API), connects ``--online`` of
them, spread evenly over the topic's user ids, by WebSocket (acknowledging what they receive, as clients do),
then sends ``--sends`` topic notifications one after the other. For each it notes the 202's latency (POST to
answer) and the time from the POST until every online subscriber has the notification; the next send starts
once it is everywhere (or after ``--deadline-s``). Then it waits for every expansion to finish and counts the
deliveries in the record (one per subscriber and notification). After each send has arrived everywhere, one
direct notification (one recipient) is sent too: its 202 latency is the machine's baseline at that moment.

    .venv/bin/python loadtests/topic_fanout.py                   # 100,000 subscribers, 2,000 online, 50 sends
    .venv/bin/python loadtests/topic_fanout.py --subscribers 10000 --online 500 --sends 10

Redis and PostgreSQL are embedded unless ``NOTIFLOW_REDIS_URL`` / ``NOTIFLOW_DATABASE_URL`` are set (then a
fresh database and key prefix, removed afterwards). Loopback only. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from lean_http import LeanClient
from stores import Stores
from websockets.asyncio.client import ClientConnection, connect

from notiflow.config import Settings
from notiflow.devstack import DevStack, free_port
from notiflow.store import topics as topics_sql

TOPIC = "fanout"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def subscribe_api(base: str, users: list[str], concurrency: int) -> list[str]:
    """Subscribe ``users``, ``concurrency`` requests at a time (lean keep-alive clients: httpx costs more CPU per
    request than the gateway does); the answers that were retried."""
    queue = iter(users)
    retried: list[str] = []

    async def one() -> None:
        client = LeanClient(timeout_s=60)
        try:
            for user in queue:
                for attempt in range(5):  # PUT is idempotent: a 503 (store busy, outcome unknown) is retried
                    response = await client.request("PUT", f"{base}/topics/{TOPIC}/subscribers/{user}")
                    if response.status_code == 204:
                        break
                    if response.status_code != 503 or attempt == 4:
                        raise RuntimeError(f"PUT {user}: {response.status_code} {response.content[:200]!r}")
                    retried.append(response.content[:300].decode())
                    await asyncio.sleep(0.1 * (attempt + 1))
        finally:
            await client.aclose()

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return retried


async def subscribe_bulk(database_url: str, users: list[str]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for start in range(0, len(users), 10_000):
            await topics_sql.subscribe_many(conn, TOPIC, users[start : start + 10_000])
    finally:
        await conn.close()


class Online:
    """The online subscribers: one reader task per socket, noting when each notification id arrives."""

    def __init__(self) -> None:
        self.sockets: list[ClientConnection] = []
        self.arrived: dict[str, int] = {}
        self.last_at: dict[str, float] = {}
        self.complete: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, ws_base: str, users: list[str], concurrency: int = 100) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(user: str) -> None:
            async with gate:
                conn = await connect(f"{ws_base}/ws/{user}", open_timeout=60, proxy=None, max_queue=None)
                await conn.send('{"type":"ping"}')
                while orjson.loads(await conn.recv()).get("type") != "pong":
                    pass
                self.sockets.append(conn)
                self._tasks.append(asyncio.create_task(self._read(conn)))

        await asyncio.gather(*(one(u) for u in users))

    def expect(self, nid: str) -> asyncio.Event:
        return self.complete.setdefault(nid, asyncio.Event())

    async def _read(self, conn: ClientConnection) -> None:
        try:
            async for raw in conn:
                msg = orjson.loads(raw)
                if msg.get("type") != "notification":
                    continue
                nid = msg["id"]
                await conn.send(orjson.dumps({"type": "ack", "ids": [nid]}).decode())
                count = self.arrived[nid] = self.arrived.get(nid, 0) + 1
                if count == len(self.sockets):
                    self.last_at[nid] = time.monotonic()
                    self.expect(nid).set()
        except Exception:  # noqa: BLE001 - a closed socket ends its reader; the run reports the shortfall
            return

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(s.close() for s in self.sockets), return_exceptions=True)


async def send_all(base: str, online: Online, sends: int, deadline_s: float) -> dict[str, list[float]]:
    """The sends, one after the other; after each, once it is everywhere, one direct notification (to one user,
    not subscribed) whose 202 is the baseline of this machine at that moment."""
    out: dict[str, list[float]] = {"accept_ms": [], "direct_ms": [], "everywhere_s": [], "missed": []}
    client = LeanClient(timeout_s=30)
    json_headers = {"content-type": "application/json"}
    try:
        for n in range(sends):
            body = orjson.dumps({"topic": TOPIC, "event": "fanout", "payload": {"n": n}})
            started = time.monotonic()
            response = await client.post(f"{base}/notifications", body, json_headers)
            answered = time.monotonic()
            if response.status_code != 202:
                raise RuntimeError(f"send {n}: {response.status_code} {response.content[:200]!r}")
            out["accept_ms"].append((answered - started) * 1000)
            nid = orjson.loads(response.content)["id"]
            try:
                await asyncio.wait_for(online.expect(nid).wait(), deadline_s)
                out["everywhere_s"].append(online.last_at[nid] - started)
            except TimeoutError:
                out["missed"].append(n)
            direct = orjson.dumps({"user_id": "baseline-user", "event": "direct", "payload": {"n": n}})
            started = time.monotonic()
            response = await client.post(f"{base}/notifications", direct, json_headers)
            out["direct_ms"].append((time.monotonic() - started) * 1000)
    finally:
        await client.aclose()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stores = Stores("topics")
    stores.prepare()
    settings = Settings(
        redis_url=stores.redis_url, database_url=stores.database_url, key_prefix=stores.prefix,
        stream_key=f"{stores.prefix}:stream", log_level="WARNING", ws_max_sockets=max(20_000, args.online * 2),
        topic_page=args.page, pg_pool_max=20,
    )
    workdir = Path(tempfile.mkdtemp(prefix="topic-fanout-"))  # kept: the processes' logs stay for a look
    stack = DevStack(settings, gateways=1, stream_workers=args.stream_workers, retry_workers=1, base_port=free_port(),
                     workdir=workdir)
    users = [f"sub-{i:06d}" for i in range(args.subscribers)]
    online = Online()
    result: dict[str, Any] = {"subscribers": args.subscribers, "online": args.online, "sends": args.sends,
                              "stream_workers": args.stream_workers, "page": args.page, "bulk": args.bulk}
    try:
        await asyncio.to_thread(stack.start)
        base = stack.gateway_urls[0]
        clock = time.monotonic()
        if args.bulk:
            await subscribe_bulk(stack.settings.database_url_required, users)
        else:
            retried = await subscribe_api(base, users, args.concurrency)
            result["subscribe_retries"] = len(retried)
            if retried:
                print(f"retried {len(retried)} subscriptions, e.g. {retried[0]}; logs in {stack.log_dir}", flush=True)
        result["subscribe_s"] = round(time.monotonic() - clock, 1)
        print(f"subscribed {len(users)} in {result['subscribe_s']} s", flush=True)
        clock = time.monotonic()
        # Spread over the topic (the expansion goes in user id order): not all in its first page.
        spread = users[:: max(1, len(users) // args.online)][: args.online]
        await online.connect(base.replace("http://", "ws://", 1), spread)
        print(f"connected {args.online} sockets in {time.monotonic() - clock:.1f} s", flush=True)
        result["logs"] = str(stack.log_dir)
        result["load_before"] = os.getloadavg()
        sent = await send_all(base, online, args.sends, args.deadline_s)
        result["load_after"] = os.getloadavg()
        for name, values, scale in (("accept_ms", sent["accept_ms"], 1), ("direct_ms", sent["direct_ms"], 1),
                                    ("everywhere_s", sent["everywhere_s"], 1)):
            if values:
                result[f"{name}_p50"] = round(statistics.median(values) * scale, 2)
                result[f"{name}_p99"] = round(pct(values, 99) * scale, 2)
                result[f"{name}_max"] = round(max(values) * scale, 2)
        result["sends_not_everywhere_in_time"] = len(sent["missed"])
        conn = await asyncpg.connect(stack.settings.database_url_required)
        try:
            for _ in range(600):
                open_sends = await conn.fetchval("SELECT count(*) FROM topic_sends WHERE NOT done")
                if open_sends == 0:
                    break
                await asyncio.sleep(0.5)
            result["deliveries"] = await conn.fetchval("SELECT count(*) FROM deliveries")
            result["deliveries_expected"] = args.subscribers * args.sends + args.sends  # and the baseline ones
        finally:
            await conn.close()
    finally:
        await online.close()
        await asyncio.to_thread(stack.stop)
        stores.cleanup()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--online", type=int, default=2000, help="subscribers connected by WebSocket")
    parser.add_argument("--sends", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=64, help="subscription requests in flight")
    parser.add_argument("--bulk", action="store_true", help="subscribe in SQL (subscribe_many), not through the API")
    parser.add_argument("--stream-workers", type=int, default=1)
    parser.add_argument("--page", type=int, default=5000, help="NOTIFLOW_TOPIC_PAGE")
    parser.add_argument("--deadline-s", type=float, default=60.0, help="longest wait for one send to arrive")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
