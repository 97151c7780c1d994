"""The workload a chaos scenario runs throughout its fault: producers at a steady rate, users online for the
whole run (some on two devices on two nodes), users offline, users reconnecting, webhooks, and a probe.

User names follow conformance/workload.py (``<run>-live<i>``, ``<run>-off<i>``, ``<run>-churn<i>``), so the
conformance self-test's lossy proxy keys its faults on them here too. The probe (``<run>-probe``) sends one
notification every ``probe_every_s`` to a user with a socket on the first node and waits for it: that is how
the time to recover after heal is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import httpx
from websockets.exceptions import WebSocketException

from conformance.client import Api, IngestResult, Socket
from conformance.history import History
from conformance.workload import bounded

_OPEN_ERRORS = (OSError, TimeoutError, WebSocketException)
#: The probe opens a fresh socket every this many probes.
REOPEN_EVERY = 8


@dataclass(frozen=True, slots=True)
class Mix:
    live: int = 4  # one socket each, open for the whole run
    multi: int = 2  # two sockets each, on two nodes
    offline: int = 4  # never connect
    churn: int = 3  # connect and disconnect all the time
    producers: int = 3
    rate_per_s: float = 15.0  # ingests per second, all producers together
    max_recipients: int = 3
    webhook_share: float = 0.25  # share of ingests that also name the webhook downstream
    probe_every_s: float = 0.25
    probe_good_s: float = 2.5  # a probe received within this is healthy


@dataclass(slots=True)
class Probe:
    sent_ns: int
    good: bool


@dataclass
class Workload:
    urls: list[str]
    http: httpx.AsyncClient
    history: History
    run_id: str
    mix: Mix
    webhook_url: str | None = None
    seed: int = 0
    results: list[IngestResult] = field(default_factory=list)
    hooked: set[str] = field(default_factory=set)  # cids of the ingests that named the webhook
    probes: list[Probe] = field(default_factory=list)
    live: list[Socket] = field(default_factory=list)
    extra_users: list[str] = field(default_factory=list)  # a nemesis's own users, swept at the end too
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _stop_probe: asyncio.Event = field(default_factory=asyncio.Event)
    _probe_sock: Socket | None = None
    _sockets: list[Socket] = field(default_factory=list)

    @property
    def users(self) -> dict[str, list[str]]:
        r = self.run_id
        return {
            "live": [f"{r}-live{i}" for i in range(self.mix.live)],
            "multi": [f"{r}-live{i}m" for i in range(self.mix.multi)],
            "off": [f"{r}-off{i}" for i in range(self.mix.offline)],
            "churn": [f"{r}-churn{i}" for i in range(self.mix.churn)],
        }

    @property
    def probe_user(self) -> str:
        return f"{self.run_id}-probe"

    def everyone(self) -> list[str]:
        return [u for g in self.users.values() for u in g] + [self.probe_user, *self.extra_users]

    async def start(self) -> None:
        n, groups = len(self.urls), self.users
        plan = [(self.urls[i % n], user, f"ws-{user}", i % 2 == 0) for i, user in enumerate(groups["live"])]
        for i, user in enumerate(groups["multi"]):
            plan.append((self.urls[i % n], user, f"ws-{user}-a", True))
            plan.append((self.urls[(i + 1) % n], user, f"ws-{user}-b", False))
        self.live = await bounded(16, [self._open_live(*p) for p in plan])
        self._tasks += [asyncio.create_task(self._producer(p)) for p in range(self.mix.producers)]
        self._tasks += [asyncio.create_task(self._churner(c)) for c in range(self.mix.churn)]
        self._tasks.append(asyncio.create_task(self._prober()))

    async def _open_live(self, url: str, user: str, conn: str, auto_ack: bool) -> Socket:
        """A socket that must stay open for the whole run. A refused open is retried (a node may still be
        recovering from the previous scenario's fault; clients reconnect on 1011): each try is its own conn."""
        for attempt in range(20):
            sock = Socket(url, user, self.history, conn if not attempt else f"{conn}-r{attempt}", auto_ack=auto_ack)
            try:
                return await sock.open(timeout_s=5)
            except _OPEN_ERRORS:
                await sock.close()
                await asyncio.sleep(0.5)
        raise RuntimeError(f"{url} refused a socket for {user} 20 times in a row")

    async def _producer(self, p: int) -> None:
        prng = random.Random(self.seed * 31 + p)
        everyone = [u for g in self.users.values() for u in g]
        api = Api(self.http, self.urls[p % len(self.urls)], self.history, f"producer-{p}")
        interval_s = self.mix.producers / self.mix.rate_per_s
        k = 0
        while not self._stop.is_set():
            started = time.monotonic()
            api = api.as_process(api.process, self.urls[(p + k) % len(self.urls)])
            recipients = prng.sample(everyone, prng.randint(1, min(self.mix.max_recipients, len(everyone))))
            hook = self.webhook_url if self.webhook_url and prng.random() < self.mix.webhook_share else None
            result = await api.ingest(recipients, event=f"chaos.p{p}", payload={"k": k}, webhook_url=hook)
            self.results.append(result)
            if hook is not None:
                self.hooked.add(result.cid)
            k += 1
            # A steady offered rate: the next request goes out on schedule unless this one took longer.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, interval_s - (time.monotonic() - started))):
                    await self._stop.wait()

    async def _churner(self, c: int) -> None:
        crng = random.Random(self.seed * 7 + c)
        churn = self.users["churn"]
        count = 0
        while not self._stop.is_set():
            count += 1
            sock = Socket(self.urls[crng.randrange(len(self.urls))], crng.choice(churn), self.history,
                          f"churn-{c}-{count}", live=False, auto_ack=crng.random() < 0.5)  # fmt: skip
            try:
                await sock.open(timeout_s=5)
                hold_s = crng.uniform(0.3, 1.5)
            except _OPEN_ERRORS:
                hold_s = 0.3  # refused (a node down, a store cut): try again shortly, never in a tight loop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hold_s):
                    await self._stop.wait()
            await sock.close()

    async def _prober(self) -> None:
        api = Api(self.http, self.urls[0], self.history, "probe")
        while not self._stop_probe.is_set():
            started = time.monotonic()
            sent_ns = self.history.now_ns()
            good = False
            sock = await self._probe_socket()
            if sock is not None:
                result = await api.ingest([self.probe_user], event="chaos.probe")
                if result.id is not None:
                    good = await sock.wait_for_ids({result.id}, self.mix.probe_good_s)
            self.probes.append(Probe(sent_ns, good))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.mix.probe_every_s - (time.monotonic() - started))):
                    await self._stop_probe.wait()

    async def _probe_socket(self) -> Socket | None:
        """The probe's socket, reopened when the server closed it, and every ``REOPEN_EVERY`` probes anyway: a
        platform that serves old sockets but refuses new ones is not healthy (not ``live``: it comes and goes)."""
        sock = self._probe_sock
        if sock is not None and sock.closed_by is None and len(self.probes) % REOPEN_EVERY:
            return sock
        if sock is not None:
            await sock.close()
        n = len(self._sockets)
        sock = Socket(self.urls[0], self.probe_user, self.history, f"probe-{n}", live=False, auto_ack=True)
        self._sockets.append(sock)
        try:
            await sock.open(timeout_s=3)
        except _OPEN_ERRORS:
            await asyncio.sleep(0.2)
            return None
        self._probe_sock = sock
        return sock

    def healthy_streak(self, since_ns: int, streak: int) -> int | None:
        """Index of the first probe sent at or after ``since_ns`` that begins ``streak`` good probes in a row."""
        run = 0
        for i, probe in enumerate(self.probes):
            if probe.sent_ns < since_ns:
                continue
            run = run + 1 if probe.good else 0
            if run == streak:
                return i - streak + 1
        return None

    async def stop_producers(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks[:-1], return_exceptions=True)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every live socket got what was accepted for its user (bounded); True if all did."""
        want: dict[str, set[str]] = {}
        for r in self.results:
            if r.outcome == "ok":
                for u in r.user_ids:
                    want.setdefault(u, set()).add(r.cid)
        oks = await asyncio.gather(*(s.wait_for_cids(want.get(s.user, set()), timeout_s) for s in self.live))
        return all(oks)

    async def finish(self) -> None:
        """Stop the probe, close every socket, sweep every user's offline queue, read their DLQ entries."""
        self._stop_probe.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await bounded(32, [s.close() for s in [*self.live, *self._sockets]])
        api = Api(self.http, self.urls[0], self.history, "sweeper")
        users = self.everyone()
        n = len(self.urls)
        await bounded(8, [api.as_process(f"sweeper-{u}", self.urls[i % n]).sweep(u) for i, u in enumerate(users)])
        await bounded(8, [api.as_process(f"dlq-{u}").dlq(u) for u in users])
