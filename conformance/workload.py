"""The mixed run: concurrent producers, many users online, offline and churning, on every gateway node.

User names say what a user does: ``<run>-live<i>`` keeps a socket (two, on two nodes, for ``-live<i>m``
users) open for the whole run, ``<run>-off<i>`` never connects, ``<run>-churn<i>`` connects and disconnects
while the producers run. The self-tests' fault proxy keys its faults on these names.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
from websockets.exceptions import WebSocketException

from conformance.checker import Verdict, check
from conformance.client import Api, IngestResult, Socket
from conformance.history import History
from conformance.profile import Profile

T = TypeVar("T")


@dataclass
class MixedRun:
    history: History
    verdict: Verdict
    live: list[Socket]
    users: dict[str, list[str]]
    results: list[IngestResult]
    drained: bool
    runtime_s: float
    seed: int
    churn_sockets: int = 0
    server_closes: list[tuple[str, int | None]] = field(default_factory=list)


async def bounded(limit: int, coros: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``coros`` with at most ``limit`` in flight."""
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[T]) -> T:
        async with sem:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def run_mixed(
    urls: list[str], http: httpx.AsyncClient, profile: Profile, run_id: str, *, seed: int | None = None
) -> MixedRun:
    """Run the mixed workload against ``urls`` and judge its history. Bounded in requests and in time."""
    seed = random.randrange(2**32) if seed is None else seed
    history = History(f"mixed-{run_id}")
    started = time.monotonic()
    users = {
        "live": [f"{run_id}-live{i}" for i in range(profile.online_users)],
        "multi": [f"{run_id}-live{i}m" for i in range(profile.multi_device_users)],
        "off": [f"{run_id}-off{i}" for i in range(profile.offline_users)],
        "churn": [f"{run_id}-churn{i}" for i in range(profile.churn_users)],
    }
    everyone = [u for group in users.values() for u in group]
    n = len(urls)
    live: list[Socket] = []
    for i, user in enumerate(users["live"]):
        live.append(Socket(urls[i % n], user, history, f"ws-{user}", auto_ack=i % 2 == 0))
    for i, user in enumerate(users["multi"]):
        live.append(Socket(urls[i % n], user, history, f"ws-{user}-a", auto_ack=True))
        live.append(Socket(urls[(i + 1) % n], user, history, f"ws-{user}-b"))
    await bounded(32, [s.open() for s in live])

    results: list[IngestResult] = []
    done = asyncio.Event()

    async def producer(p: int, count: int) -> None:
        api = Api(http, urls[p % n], history, f"producer-{p}")
        prng = random.Random(seed + p)
        for k in range(count):
            api = api.as_process(api.process, urls[(p + k) % n])
            recipients = prng.sample(everyone, prng.randint(1, min(profile.max_recipients, len(everyone))))
            results.append(await api.ingest(recipients, event=f"mixed.p{p}", payload={"k": k}))

    churn_count = 0

    async def churner(c: int) -> None:
        nonlocal churn_count
        crng = random.Random(seed * 7 + c)
        while not done.is_set():
            user = crng.choice(users["churn"]) if users["churn"] else None
            if user is None:
                return
            churn_count += 1
            sock = Socket(urls[crng.randrange(n)], user, history, f"churn-{c}-{churn_count}", live=False,
                          auto_ack=crng.random() < 0.5)  # fmt: skip
            try:
                await sock.open()
                hold_s = crng.uniform(0.2, 1.5)
            except (OSError, TimeoutError, WebSocketException):
                hold_s = 0.1  # refused: try again shortly, never in a tight loop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hold_s):
                    await done.wait()
            await sock.close()

    per = [profile.notifications // profile.producers] * profile.producers
    per[0] += profile.notifications - sum(per)
    churners = [asyncio.create_task(churner(c)) for c in range(min(8, profile.churn_users))]
    try:
        await asyncio.gather(*(producer(p, per[p]) for p in range(profile.producers)))
    finally:
        done.set()
        await asyncio.gather(*churners, return_exceptions=True)

    # Every live socket must get what was accepted for its user: wait for exactly that, bounded.
    want: dict[str, set[str]] = {}
    for r in results:
        if r.outcome == "ok":
            for u in r.user_ids:
                want.setdefault(u, set()).add(r.cid)
    oks = await asyncio.gather(*(s.wait_for_cids(want.get(s.user, set()), profile.drain_timeout_s) for s in live))
    server_closes = [(s.conn, s.close_code) for s in live if s.closed_by == "server"]
    await bounded(64, [s.close() for s in live])
    api = Api(http, urls[0], history, "sweeper")
    await bounded(16, [api.as_process(f"sweeper-{u}", urls[i % n]).sweep(u) for i, u in enumerate(everyone)])
    verdict = check(history)
    return MixedRun(
        history, verdict, live, users, results, all(oks), time.monotonic() - started, seed, churn_count,
        server_closes,
    )  # fmt: skip
