"""notiflow load benchmark: ingest throughput, live delivery throughput and end-to-end latency.

It starts its own cluster (``notiflow.devstack.DevStack``), opens WebSocket clients that acknowledge what
they receive, runs closed-loop producers that POST notifications for a fixed duration, waits (bounded) for
stragglers, and prints a compact table and, as its last line, one JSON object with every figure.

    python loadtests/bench.py                                   # 1 gateway, 200 sockets, 32 producers, 20 s
    python loadtests/bench.py --gateways 2 --stream-workers 2   # routing across nodes
    python loadtests/bench.py --fanout 50 --producers 8         # 50 recipients per notification
    python loadtests/bench.py --offline-share 0.2               # a fifth of the recipients never connect
    python loadtests/bench.py --ingest-only --stream-workers 0  # raw ingest: no sockets, no delivery work

Redis and PostgreSQL are embedded (pip packages) unless ``NOTIFLOW_REDIS_URL`` / ``NOTIFLOW_DATABASE_URL``
are set; then the run uses a fresh database (dropped afterwards) and a fresh Redis key prefix (deleted
afterwards). Only loopback addresses are used, and every phase has a time bound.

Client and server share the machine, so the run also reports the CPU each side used, read from
``/proc/<pid>/stat`` of the stack's processes (whole process trees: PostgreSQL's backends included).
Latency is measured from just before the POST (``e2e``) and from the 202 (``after_202``) to the frame's
arrival at the client; producers are closed-loop, so latencies are those of the offered load the server
sustained (no coordinated-omission correction).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import orjson
from lean_http import HttpError, LeanClient
from stores import Stores
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from notiflow.config import Settings
from notiflow.devstack import DevStack, free_port_range, psql

log = logging.getLogger("bench")
T = TypeVar("T")

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_RETRY_AFTER_CAP_S = 0.5  # producers honour Retry-After, but never stall a whole run on it


# --- CPU accounting from /proc --------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, float, float, str] | None:
    """(ppid, cpu seconds incl. reaped children, own cpu seconds, command name) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    ppid = int(fields[1])
    own = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14])
    return ppid, (own + children) / _CLK_TCK, own / _CLK_TCK, comm


def _scan() -> tuple[dict[int, list[int]], dict[int, tuple[str, float]]]:
    """Every process: the children of each pid, and each pid's (command, own cpu seconds)."""
    children: dict[int, list[int]] = {}
    own: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            own[int(entry.name)] = (stat[3], stat[2])
    return children, own


def _tree(root: int, children: dict[int, list[int]], seen: set[int] | None = None) -> Iterator[int]:
    """``root`` and its descendants, each once; the pids visited are added to ``seen``."""
    todo = [root]
    seen = set() if seen is None else seen
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            yield pid
            todo.extend(children.get(pid, ()))


def tree_cpu_s(root: int, children: dict[int, list[int]], seen: set[int] | None = None) -> float:
    """CPU seconds of ``root`` and every live descendant. Each live process counts its own time plus
    that of its reaped children, so exited PostgreSQL backends are counted once and live ones once.
    The pids visited are added to ``seen``."""
    stats = (_proc_stat(pid) for pid in _tree(root, children, seen))
    return sum(stat[1] for stat in stats if stat is not None)


_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0  # gone meanwhile


def tree_rss_kb(root: int, children: dict[int, list[int]]) -> int:
    """Resident memory of ``root`` and every live descendant, kB (``/proc/<pid>/statm``)."""
    return sum(_rss_kb(pid) for pid in _tree(root, children))


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


class CpuMeter:
    """Snapshots of the server's process groups (by role) and of this process."""

    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.loadgen_pids: list[int] = []  # client processes (--client-procs), counted with us

    def groups(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name in self.stack.process_names:
            pid = self.stack.supervisor.pid(name)
            if pid is not None:
                out.setdefault(name.rsplit("-", 1)[0], []).append(pid)
        for role, server in (("redis", self.stack.embedded_redis), ("postgres", self.stack.embedded_postgres)):
            if server is not None and server.pid is not None:
                out[role] = [server.pid]
        return out

    def gateway_rss_kb(self) -> int:
        """Resident memory of every gateway process (each gateway's process tree), kB."""
        children, _ = _scan()
        return sum(tree_rss_kb(p, children) for p in self.groups().get("gateway", []))

    def snapshot(self) -> dict[str, Any]:
        children, own = _scan()
        ours: set[int] = {os.getpid()}
        snap: dict[str, Any] = {
            role: sum(tree_cpu_s(p, children, ours) for p in pids) for role, pids in self.groups().items()
        }
        snap["loadgen"] = self_cpu_s() + sum(tree_cpu_s(p, children, ours) for p in self.loadgen_pids)
        busy, total = machine_cpu()
        snap["_machine_busy"], snap["_machine_total"] = busy, total
        snap["_wall"] = time.monotonic()
        snap["_others"] = {pid: v for pid, v in own.items() if pid not in ours}
        return snap

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        wall = b["_wall"] - a["_wall"]
        roles = {k: round(b[k] - a.get(k, 0.0), 2) for k in b if not k.startswith("_")}
        server = round(sum(v for k, v in roles.items() if k != "loadgen"), 2)
        machine_busy = b["_machine_busy"] - a["_machine_busy"]
        machine_total = b["_machine_total"] - a["_machine_total"]
        # Which other programs ran meanwhile (by command name), so a noisy run can be recognised.
        others: Counter[str] = Counter()
        for pid, (comm, cpu) in b["_others"].items():
            others[comm] += cpu - a["_others"].get(pid, (comm, 0.0))[1]
        return {
            "wall_s": round(wall, 2),
            "cpu_s": roles,
            "server_cpu_s": server,
            "server_cores": round(server / wall, 2) if wall else 0.0,
            "loadgen_cores": round(roles.get("loadgen", 0.0) / wall, 2) if wall else 0.0,
            "machine_busy_pct": round(100 * machine_busy / machine_total, 1) if machine_total else 0.0,
            # Busy time neither side's processes account for: kernel work (loopback softirqs) and any
            # other program running on the machine meanwhile (which skews every figure: check it is ~0).
            "other_cores": round(machine_busy / wall - (server + roles.get("loadgen", 0.0)) / wall, 2) if wall else 0.0,
            "other_top": {k: round(v / wall, 2) for k, v in others.most_common(3) if v > 0} if wall else {},
            "cores": os.cpu_count(),
        }


# --- the run's bookkeeping ------------------------------------------------------------------------


@dataclass
class Sent:
    t0: float  # just before the POST
    t202: float  # when the 202 was read
    online: tuple[str, ...]  # recipients with an open socket at send time


@dataclass
class Stats:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, Sent] = field(default_factory=dict)
    accepted_in_window: int = 0
    recipients_accepted: int = 0
    recipients_in_window: int = 0
    post_latency: list[float] = field(default_factory=list)  # POST round trip of 202s
    arrivals: dict[tuple[str, str], float] = field(default_factory=dict)  # (id, user) -> first arrival
    arrivals_in_window: int = 0
    duplicates: int = 0
    frames: int = 0
    acks_sent: int = 0
    closed_sockets: dict[str, str] = field(default_factory=dict)  # user -> why
    window: tuple[float, float] = (0.0, 0.0)


def percentiles(values: list[float], ps: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles in milliseconds, plus max."""
    if not values:
        return {**{f"p{p:g}": None for p in ps}, "max": None, "n": 0}
    data = sorted(values)
    out: dict[str, Any] = {}
    for p in ps:
        rank = max(0, min(len(data) - 1, math.ceil(p / 100 * len(data)) - 1))
        out[f"p{p:g}"] = round(data[rank] * 1000, 2)
    out["max"] = round(data[-1] * 1000, 2)
    out["n"] = len(data)
    return out


# --- WebSocket clients ----------------------------------------------------------------------------


class Socket:
    """One user's socket: records every notification frame and acknowledges it at once."""

    def __init__(self, user: str, url: str, stats: Stats) -> None:
        self.user = user
        self.url = url
        self.stats = stats
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.open = False
        self._pong = asyncio.Event()

    async def connect(self) -> None:
        self.ws = await connect(
            self.url, compression=None, ping_interval=None, open_timeout=30, close_timeout=2, max_queue=None
        )
        self.open = True
        self.task = asyncio.create_task(self._read(), name=f"ws-{self.user}")

    async def registered(self, timeout_s: float) -> None:
        """A pong proves the gateway has put the socket in its hub, so its presence is registered."""
        assert self.ws is not None
        self._pong.clear()
        await self.ws.send('{"type":"ping"}')
        await asyncio.wait_for(self._pong.wait(), timeout_s)

    async def _read(self) -> None:
        assert self.ws is not None
        ws, stats, user = self.ws, self.stats, self.user
        arrivals = stats.arrivals
        try:
            async for message in ws:
                now = time.monotonic()
                frame = orjson.loads(message)
                kind = frame.get("type")
                if kind == "notification":
                    stats.frames += 1
                    nid = frame["id"]
                    key = (nid, user)
                    if key in arrivals:
                        stats.duplicates += 1
                    else:
                        arrivals[key] = now
                        if stats.window[0] <= now <= stats.window[1]:
                            stats.arrivals_in_window += 1
                    await ws.send(b'{"type":"ack","ids":["' + nid.encode() + b'"]}', text=True)
                    stats.acks_sent += 1
                elif kind == "pong":
                    self._pong.set()
        except ConnectionClosed as exc:
            if self.open:
                self.stats.closed_sockets[user] = f"closed {exc.rcvd.code if exc.rcvd else 'abnormally'}"
        finally:
            self.open = False

    async def close(self) -> None:
        was_open, self.open = self.open, False
        if self.ws is not None and was_open:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def open_sockets(users: list[str], urls: list[str], stats: Stats, timeout_s: float) -> list[Socket]:
    sockets = [
        Socket(u, f"{urls[i % len(urls)].replace('http://', 'ws://')}/ws/{u}", stats) for i, u in enumerate(users)
    ]
    limit = asyncio.Semaphore(50)

    async def one(sock: Socket) -> None:
        async with limit:
            await sock.connect()
            await sock.registered(timeout_s)

    await asyncio.wait_for(asyncio.gather(*(one(s) for s in sockets)), timeout_s)
    return sockets


# --- producers ------------------------------------------------------------------------------------


@dataclass
class Plan:
    online_users: list[str]
    offline_users: list[str]
    recipients: int
    offline_share: float

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
    target = f"{url}/notifications"
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
        users, live = plan.pick(rng, is_open)
        t0 = time.monotonic()
        body = orjson.dumps({"user_ids": users, "event": "bench.tick", "payload": {"t": t0, "p": index, "n": n}})
        try:
            resp = await client.post(target, content=body, headers=headers)
        except HttpError as exc:
            stats.errors[exc.kind] += 1
            continue
        t1 = time.monotonic()
        stats.statuses[resp.status_code] += 1
        if resp.status_code == 202:
            nid = orjson.loads(resp.content)["id"]
            stats.accepted[nid] = Sent(t0, t1, live)
            stats.recipients_accepted += len(users)
            stats.post_latency.append(t1 - t0)
            if t1 <= stats.window[1]:
                stats.accepted_in_window += 1
                stats.recipients_in_window += len(users)
        elif resp.status_code in (429, 503):
            try:
                wait = float(resp.headers.get("retry-after", "0.1"))
            except ValueError:
                wait = 0.1
            await asyncio.sleep(min(max(wait, 0.01), _RETRY_AFTER_CAP_S))


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

    stats = _runner()(main())
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


# --- the run --------------------------------------------------------------------------------------


def start_profilers(stack: DevStack, seconds: float, out_dir: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy record on every gateway and stream worker during the load window (if py-spy is installed)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found: no profiles", file=sys.stderr)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in stack.process_names:
        pid = stack.supervisor.pid(name)
        if pid is None or name.startswith("retry"):
            continue
        argv = [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "67",
                "-f", "raw", "-o", str(out_dir / f"{name}.txt")]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def db_status_counts(database_url: str) -> dict[str, int]:
    try:
        out = psql(database_url, "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY 1", timeout_s=30)
    except Exception as exc:  # noqa: BLE001 - a figure for the report, not a check
        return {"error": str(exc)[:200]}  # type: ignore[dict-item]
    return {s: int(n) for s, n in (line.split("|") for line in out.splitlines() if "|" in line)}


def count_status(database_url: str, status: str) -> int | None:
    try:
        return int(psql(database_url, f"SELECT count(*) FROM deliveries WHERE status = '{status}'", timeout_s=30))
    except Exception:  # noqa: BLE001 - a figure for the report, not a check
        return None


async def settled_dispatched(database_url: str, timeout_s: float, quiet_s: float = 3.0) -> int | None:
    """Deliveries still `dispatched` once socket acks stop landing: every frame was acked, so each one left
    is an acknowledgement the server dropped. Waits (bounded) until the count has not moved for ``quiet_s``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout_s
    last = await loop.run_in_executor(None, count_status, database_url, "dispatched")
    still_since = time.monotonic()
    while last and time.monotonic() < deadline and time.monotonic() - still_since < quiet_s:
        await asyncio.sleep(0.5)
        now = await loop.run_in_executor(None, count_status, database_url, "dispatched")
        if now is None:
            return None
        if now != last:
            last, still_since = now, time.monotonic()
    return last


def server_warnings(log_dir: Path, top: int = 8) -> dict[str, int]:
    """Warnings and errors the stack's processes logged (JSON lines), by process and message."""
    seen: Counter[str] = Counter()
    for path in sorted(log_dir.glob("*.log")):
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            for line in fh:
                if not line.startswith(b"{"):
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if str(rec.get("level", "")).lower() in ("warning", "error", "critical"):
                    # The error's kind (e.g. "postgresql: socket acks: DeadlockDetectedError"), not its detail.
                    error = str(rec.get("error") or "").split("\n")[0]
                    kind = re.match(r"^[^:]*(?::[^:]*)?: \w+", error)
                    why = f" ({kind.group(0) if kind else error[:60]})" if error else ""
                    seen[f"{path.stem}: {rec.get('msg')}{why}"] += 1
    return dict(seen.most_common(top))


async def run(args: argparse.Namespace, stack: DevStack, database_url: str) -> dict[str, Any]:
    stats = Stats()
    meter = CpuMeter(stack)
    urls = stack.gateway_urls
    n_sockets = 0 if args.ingest_only else args.sockets
    online_users = [f"u{i}" for i in range(n_sockets)]
    offline_users = [f"off{i}" for i in range(args.offline_users)]
    recipients = args.fanout or args.recipients

    rss_before_kb = meter.gateway_rss_kb()
    t_open = time.monotonic()
    sockets = await open_sockets(online_users, urls, stats, args.connect_timeout) if n_sockets else []
    open_s = time.monotonic() - t_open
    plan = Plan(online_users, offline_users, recipients, 1.0 if args.ingest_only else args.offline_share)
    by_user = {s.user: s for s in sockets}

    def is_open(user: str) -> bool:
        return by_user[user].open

    rate = args.rate / args.producers if args.rate else None
    opts = {"rate": rate, "request_timeout": args.request_timeout}
    procs = ClientProcs(args.client_procs, args.producers, urls, plan, opts) if args.client_procs > 1 else None
    try:
        if procs is not None:
            await procs.ready(args.connect_timeout)
            meter.loadgen_pids = procs.pids
        # The machine is shared: how busy it is with the stack idle tells whether the figures are clean.
        busy0, total0 = machine_cpu()
        await asyncio.sleep(1.0)
        busy1, total1 = machine_cpu()
        idle_busy_pct = round(100 * (busy1 - busy0) / max(total1 - total0, 1e-9), 1)
        # Memory per idle socket: the gateways' resident memory with every socket open (and idle for the
        # second above) against before the first one opened.
        idle_kb_per_socket = (
            round((meter.gateway_rss_kb() - rss_before_kb) / len(sockets), 1) if sockets else None
        )
        start = time.monotonic()
        end = start + args.duration
        stats.window = (start, end)
        profilers = start_profilers(stack, args.duration, Path(args.profile)) if args.profile else []
        before = meter.snapshot()
        if procs is not None:
            procs.go(start, end)
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            after = meter.snapshot()
            await procs.collect(stats, args.request_timeout + 30)
        else:
            indices = list(range(args.producers))
            work = asyncio.create_task(
                run_producers(indices, urls, plan, stats, end, rate, args.request_timeout, is_open)
            )
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            after = meter.snapshot()
            await work
        stopped = time.monotonic()

        # Stragglers: wait (bounded) until every accepted notification reached each recipient whose
        # socket is still open.
        def missing() -> list[tuple[str, str]]:
            return [
                (nid, u)
                for nid, sent in stats.accepted.items()
                for u in sent.online
                if (nid, u) not in stats.arrivals and u not in stats.closed_sockets
            ]

        drain_deadline = time.monotonic() + args.drain_timeout
        lost = missing()
        while lost and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.1)
            lost = [k for k in lost if k not in stats.arrivals and k[1] not in stats.closed_sockets]
        drain_s = time.monotonic() - stopped
        for p in profilers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
    finally:
        if procs is not None:
            procs.stop()

    # Every received frame was acked: once the acks settle, nothing should be left `dispatched`.
    acks_dropped = await settled_dispatched(database_url, 20.0) if sockets else 0
    for s in sockets:
        await s.close()

    expected = [(nid, u) for nid, sent in stats.accepted.items() for u in sent.online]
    on_closed = sum(1 for nid, u in expected if u in stats.closed_sockets and (nid, u) not in stats.arrivals)
    e2e, after_202 = [], []
    for nid, u in expected:
        t = stats.arrivals.get((nid, u))
        if t is not None:
            sent = stats.accepted[nid]
            e2e.append(t - sent.t0)
            after_202.append(t - sent.t202)
    window = args.duration
    cpu = CpuMeter.delta(before, after)
    accepted_total = sum(1 for _ in stats.accepted)
    errors = dict(stats.errors)
    other = {str(k): v for k, v in stats.statuses.items() if k not in (202, 429, 503)}
    return {
        "config": {
            "mode": "ingest-only" if args.ingest_only else ("fanout" if args.fanout else "live"),
            "gateways": args.gateways,
            "stream_workers": args.stream_workers,
            "retry_workers": args.retry_workers,
            "duration_s": args.duration,
            "sockets": n_sockets,
            "producers": args.producers,
            "recipients": recipients,
            "offline_share": plan.offline_share,
            "rate_limit": args.rate,
            "client_procs": args.client_procs,
            "stores": "external" if os.environ.get("NOTIFLOW_DATABASE_URL") else "embedded",
        },
        "accepted": accepted_total,
        "accepted_per_s": round(stats.accepted_in_window / window, 1),
        "recipients_per_s": round(stats.recipients_in_window / window, 1),
        "deliveries_per_s": round(stats.arrivals_in_window / window, 1),
        "deliveries_total": len(stats.arrivals),
        "expected_live": len(expected),
        "missing": len(lost),
        "missing_on_closed_sockets": on_closed,
        "acks_dropped": acks_dropped,
        "server_warnings": server_warnings(stack.log_dir),
        "duplicates": stats.duplicates,
        "acks_sent": stats.acks_sent,
        "closed_sockets": len(stats.closed_sockets),
        "closed_reasons": dict(Counter(stats.closed_sockets.values())),
        "status_202": stats.statuses.get(202, 0),
        "status_429": stats.statuses.get(429, 0),
        "status_503": stats.statuses.get(503, 0),
        "status_other": other,
        "errors": errors,
        "post_latency_ms": percentiles(stats.post_latency),
        "e2e_latency_ms": percentiles(e2e),
        "after_202_latency_ms": percentiles(after_202),
        "arrived_before_202": sum(1 for v in after_202 if v < 0),
        "socket_open_s": round(open_s, 2),
        "idle_kb_per_socket": idle_kb_per_socket,
        "drain_s": round(drain_s, 2),
        "cpu": cpu,
        # CPU cost per accepted notification, by role: unlike rates, barely moved by other load on the machine.
        "cpu_ms_per_notification": {
            k: round(1000 * v / max(stats.accepted_in_window, 1), 3) for k, v in cpu["cpu_s"].items()
        },
        "busy_before_load_pct": idle_busy_pct,
        "db_status": db_status_counts(database_url),
    }


def _runner() -> Callable[[Coroutine[Any, Any, T]], T]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _fmt(p: dict[str, Any]) -> str:
    if not p.get("n"):
        return "-"
    return f"{p['p50']:.1f} / {p['p95']:.1f} / {p['p99']:.1f}  (max {p['max']:.0f}, n={p['n']})"


def print_table(r: dict[str, Any]) -> None:
    c = r["config"]
    cpu = r["cpu"]
    rows = [
        ("mode", f"{c['mode']}: {c['gateways']} gw, {c['stream_workers']} sw, {c['retry_workers']} rw, "
                 f"{c['sockets']} sockets, {c['producers']} producers, {c['recipients']} recipients/notif, "
                 f"offline share {c['offline_share']}, {c['duration_s']}s, {c['stores']} stores, "
                 f"{c['client_procs']} client proc(s)"),
        ("accepted/s (202)", f"{r['accepted_per_s']}  ({r['accepted']} total, {r['recipients_per_s']} recipients/s)"),
        ("deliveries/s (sockets)", f"{r['deliveries_per_s']}  ({r['deliveries_total']} total)"),
        ("POST latency ms p50/95/99", _fmt(r["post_latency_ms"])),
        ("e2e latency ms p50/95/99", _fmt(r["e2e_latency_ms"])),
        ("202->frame ms p50/95/99", _fmt(r["after_202_latency_ms"]) + f"  ({r['arrived_before_202']} before 202)"),
        ("429 / 503 / other / errors", f"{r['status_429']} / {r['status_503']} / {r['status_other'] or 0} / "
                                        f"{r['errors'] or 0}"),
        ("missing (must be 0)", f"{r['missing']}  of {r['expected_live']} expected; duplicates {r['duplicates']}; "
                                f"closed sockets {r['closed_sockets']} {r['closed_reasons'] or ''}"),
        ("acks not applied (must be 0)", f"{r['acks_dropped']}  (left `dispatched` though every frame was acked)"),
        ("server warnings", " ".join(f"[{k}]={v}" for k, v in r["server_warnings"].items()) or "none"),
        ("drain after stop", f"{r['drain_s']} s"),
        ("idle kB per socket (gateways)", "-" if r["idle_kb_per_socket"] is None else
                                          f"{r['idle_kb_per_socket']}  (resident memory, {c['sockets']} sockets open)"),
        ("CPU cores (server/loadgen)", f"{cpu['server_cores']} / {cpu['loadgen_cores']} of {cpu['cores']}  "
                                       f"machine busy {cpu['machine_busy_pct']}%, other {cpu['other_cores']} cores; "
                                       f"busy before load {r['busy_before_load_pct']}%"),
        ("other programs (cores)", " ".join(f"{k}={v}" for k, v in cpu["other_top"].items()) or "-"),
        ("CPU s by role", " ".join(f"{k}={v}" for k, v in sorted(cpu["cpu_s"].items()))),
        ("CPU ms per notification", " ".join(f"{k}={v}" for k, v in sorted(r["cpu_ms_per_notification"].items()))),
        ("deliveries in PostgreSQL", " ".join(f"{k}={v}" for k, v in r["db_status"].items())),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateways", type=int, default=1)
    p.add_argument("--stream-workers", type=int, default=1)
    p.add_argument("--retry-workers", type=int, default=1)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    p.add_argument("--sockets", type=int, default=200, help="WebSocket clients, users u0..uN-1 (default 200)")
    p.add_argument("--producers", type=int, default=32, help="concurrent closed-loop producers (default 32)")
    p.add_argument("--recipients", type=int, default=1, help="user_ids per notification (default 1)")
    p.add_argument("--fanout", type=int, default=0, help="fan-out mode: N user_ids per notification")
    p.add_argument("--offline-share", type=float, default=0.0, help="share of recipients that never connect")
    p.add_argument("--offline-users", type=int, default=1000, help="size of the never-connected user pool")
    p.add_argument("--ingest-only", action="store_true", help="no sockets: raw ingest throughput")
    p.add_argument("--client-procs", type=int, default=1, help="processes running the producers (default 1: this one)")
    p.add_argument("--rate", type=float, default=0.0, help="cap on total POSTs/s (default: closed loop, no cap)")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="bound on the wait for stragglers, s")
    p.add_argument("--request-timeout", type=float, default=10.0)
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--log-level", default="WARNING", help="NOTIFLOW_LOG_LEVEL of the stack (default WARNING)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra NOTIFLOW_* for the stack")
    p.add_argument("--profile", metavar="DIR", help="py-spy raw profiles of gateways and stream workers into DIR")
    p.add_argument("--workdir", metavar="DIR", help="keep the stack's logs in DIR (default: a temp dir, removed)")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON figures to FILE")
    args = p.parse_args(argv)
    if args.gateways < 1 or args.producers < 1 or args.duration <= 0:
        p.error("--gateways and --producers must be >= 1, --duration > 0")
    if not 0.0 <= args.offline_share <= 1.0:
        p.error("--offline-share is a fraction in [0, 1]")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stores = Stores("bench")
    extra_env = {
        "NOTIFLOW_KEY_PREFIX": stores.prefix,
        "NOTIFLOW_STREAM_KEY": f"{stores.prefix}:stream",
        "NOTIFLOW_LOG_LEVEL": args.log_level,
    }
    for item in args.env:
        name, _, value = item.partition("=")
        extra_env[name] = value
    # Stop cleanly on SIGTERM too (the stack's children die with us anyway, but the stores need cleanup).
    signal.signal(signal.SIGTERM, _interrupt)
    stores.prepare()
    settings = Settings(redis_url=stores.redis_url, database_url=stores.database_url)
    stack = DevStack(
        settings,
        gateways=args.gateways,
        stream_workers=args.stream_workers,
        retry_workers=args.retry_workers,
        base_port=free_port_range(args.gateways),
        extra_env=extra_env,
        workdir=Path(args.workdir) if args.workdir else None,
    )
    t0 = time.monotonic()
    try:
        stack.start()
        print(f"stack up in {time.monotonic() - t0:.1f}s: {', '.join(stack.gateway_urls)} (logs {stack.log_dir})",
              flush=True)  # fmt: skip
        runner = _runner()
        budget = args.connect_timeout + args.duration + args.request_timeout + args.drain_timeout + 60
        result = runner(asyncio.wait_for(run(args, stack, stack.database_url), budget))
    finally:
        stack.stop()
        stores.cleanup()
    result["loadgen_loop"] = "asyncio" if runner is asyncio.run else "uvloop"
    print_table(result)
    line = json.dumps(result, sort_keys=True)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line, flush=True)
    return 0 if result["missing"] == 0 and not result["acks_dropped"] else 1


if __name__ == "__main__":
    sys.exit(main())
