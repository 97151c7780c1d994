"""Closed-loop producers that POST notifications until the window ends, in this process or in child
processes (``--client-procs``)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import multiprocessing
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import orjson
from lean_http import HttpError, LeanClient

from .records import Sent, Stats

T = TypeVar("T")

_RETRY_AFTER_CAP_S = 0.5  # producers honour Retry-After, but never stall a whole run on it


def runner() -> Callable[[Coroutine[Any, Any, T]], T]:
    """uvloop's run when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


@dataclass
class Plan:
    online_users: list[str]
    offline_users: list[str]
    recipients: int
    offline_share: float
    batch: int = 1  # notifications per request: POST /notifications/batch when over 1

    def pick(self, rng: random.Random, is_open: Callable[[str], bool]) -> tuple[list[str], tuple[str, ...]]:
        """The recipients of one notification, and those of them with an open socket."""
        n_off = sum(1 for _ in range(self.recipients) if rng.random() < self.offline_share)
        n_on = min(self.recipients - n_off, len(self.online_users))
        n_off = min(self.recipients - n_on, len(self.offline_users))
        online = rng.sample(self.online_users, n_on) if n_on else []
        offline = rng.sample(self.offline_users, n_off) if n_off else []
        return online + offline, tuple(u for u in online if is_open(u))


def _always_open(user: str) -> bool:
    return True


async def producer(
    index: int,
    client: LeanClient,
    url: str,
    plan: Plan,
    stats: Stats,
    end: float,
    rate: float | None,
    is_open: Callable[[str], bool],
) -> None:
    rng = random.Random(index * 7919 + 17)
    target = f"{url}/notifications" + ("/batch" if plan.batch > 1 else "")
    headers = {"content-type": "application/json"}
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    for n in itertools.count():
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if time.monotonic() >= end:
            return
        picks = [plan.pick(rng, is_open) for _ in range(plan.batch)]
        t0 = time.monotonic()
        items = [{"user_ids": users, "event": "bench.tick", "payload": {"t": t0, "p": index, "n": n}}
                 for users, _ in picks]
        body = orjson.dumps(items[0] if plan.batch == 1 else {"notifications": items})
        try:
            resp = await client.post(target, content=body, headers=headers)
        except HttpError as exc:
            stats.errors[exc.kind] += 1
            continue
        t1 = time.monotonic()
        stats.statuses[resp.status_code] += 1
        if resp.status_code == 202:
            answer = orjson.loads(resp.content)
            _accepted(stats, picks, answer["results"] if plan.batch > 1 else [answer], t0, t1)
        elif resp.status_code in (429, 503):
            try:
                wait = float(resp.headers.get("retry-after", "0.1"))
            except ValueError:
                wait = 0.1
            await asyncio.sleep(min(max(wait, 0.01), _RETRY_AFTER_CAP_S))


def _accepted(
    stats: Stats, picks: list[tuple[list[str], tuple[str, ...]]], results: list[dict[str, Any]], t0: float, t1: float
) -> None:
    """Record a 202's accepted notifications (each item of a batch answers on its own)."""
    stats.post_latency.append(t1 - t0)
    for (users, live), result in zip(picks, results, strict=True):
        if "id" not in result:
            continue
        stats.accepted[result["id"]] = Sent(t0, t1, live)
        stats.recipients_accepted += len(users)
        if t1 <= stats.window[1]:
            stats.accepted_in_window += 1
            stats.recipients_in_window += len(users)


async def run_producers(
    indices: list[int],
    urls: list[str],
    plan: Plan,
    stats: Stats,
    end: float,
    rate: float | None,
    request_timeout: float,
    is_open: Callable[[str], bool],
) -> None:
    """Producers ``indices`` until ``end``; then at most one request timeout for the last answers."""
    # One client (one keep-alive HTTP/1.1 connection) per producer, and a lean one (lean_http.py): httpx
    # cost the load generator about 1.3 ms of CPU per request, as much as the gateway it measures.
    clients = {i: LeanClient(request_timeout) for i in indices}
    try:
        tasks = [
            asyncio.create_task(producer(i, clients[i], urls[i % len(urls)], plan, stats, end, rate, is_open))
            for i in indices
        ]
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, end - time.monotonic()) + request_timeout + 1)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for c in clients.values():
            await c.aclose()


# --- producers in other processes (--client-procs) ------------------------------------------------
# CLOCK_MONOTONIC is system-wide, so times taken in a child compare with the parent's socket arrivals.


def _client_proc(
    conn: Connection, indices: list[int], urls: list[str], plan: dict[str, Any], opts: dict[str, Any]
) -> None:
    """Child process: wait for the end time, run its producers, send back plain figures."""

    async def main() -> Stats:
        stats = Stats()
        conn.send("ready")
        loop = asyncio.get_running_loop()
        start, end = await loop.run_in_executor(None, conn.recv)
        stats.window = (start, end)
        await run_producers(
            indices, urls, Plan(**plan), stats, end, opts["rate"], opts["request_timeout"], _always_open
        )
        return stats

    stats = runner()(main())
    conn.send(
        {
            "statuses": dict(stats.statuses),
            "errors": dict(stats.errors),
            "accepted": [(nid, s.t0, s.t202, s.online) for nid, s in stats.accepted.items()],
            "accepted_in_window": stats.accepted_in_window,
            "recipients_accepted": stats.recipients_accepted,
            "recipients_in_window": stats.recipients_in_window,
            "post_latency": stats.post_latency,
        }
    )
    conn.close()


class ClientProcs:
    """``count`` child processes sharing the producers round-robin."""

    def __init__(self, count: int, producers: int, urls: list[str], plan: Plan, opts: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for k in range(count):
            ours, theirs = ctx.Pipe()
            indices = list(range(k, producers, count))
            proc = ctx.Process(
                target=_client_proc,
                args=(theirs, indices, urls, dataclasses.asdict(plan), opts),
                name=f"bench-client-{k}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    async def ready(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            if not await loop.run_in_executor(None, conn.poll, timeout_s):
                raise TimeoutError("a client process did not start in time")
            conn.recv()

    def go(self, start: float, end: float) -> None:
        for conn in self.conns:
            conn.send((start, end))

    async def collect(self, stats: Stats, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            if not await loop.run_in_executor(None, conn.poll, timeout_s):
                stats.errors["client_process_timeout"] += 1
                continue
            r = conn.recv()
            stats.statuses.update({int(k): v for k, v in r["statuses"].items()})
            stats.errors.update(r["errors"])
            for nid, t0, t202, online in r["accepted"]:
                stats.accepted[nid] = Sent(t0, t202, tuple(online))
            stats.accepted_in_window += r["accepted_in_window"]
            stats.recipients_accepted += r["recipients_accepted"]
            stats.recipients_in_window += r["recipients_in_window"]
            stats.post_latency.extend(r["post_latency"])

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
