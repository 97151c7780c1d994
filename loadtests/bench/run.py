"""One run against a started stack: open the sockets, measure the idle stack, drive the producers for the
window, wait (bounded) for stragglers, and gather every figure into one dict."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notiflow.devstack import DevStack

from .clients import Socket, open_sockets
from .metering import CpuMeter, machine_cpu
from .producers import ClientProcs, Plan, run_producers
from .records import Stats, percentiles
from .server import db_status_counts, server_warnings, settled_dispatched, start_profilers


@dataclass
class Run:
    """What the phases of one run share."""

    args: argparse.Namespace
    stack: DevStack
    stats: Stats
    meter: CpuMeter
    plan: Plan
    sockets: list[Socket] = field(default_factory=list)
    procs: ClientProcs | None = None
    figures: dict[str, Any] = field(default_factory=dict)  # measured along the way

    @property
    def by_user(self) -> dict[str, Socket]:
        return {s.user: s for s in self.sockets}


async def _idle_figures(r: Run, rss_before_kb: int) -> None:
    """How busy the machine is with the stack idle (it is shared: this tells whether the figures are clean),
    and memory per idle socket: the gateways' resident memory with every socket open (and idle for the
    second measured) against before the first one opened."""
    busy0, total0 = machine_cpu()
    await asyncio.sleep(1.0)
    busy1, total1 = machine_cpu()
    r.figures["busy_before_load_pct"] = round(100 * (busy1 - busy0) / max(total1 - total0, 1e-9), 1)
    r.figures["idle_kb_per_socket"] = (
        round((r.meter.gateway_rss_kb() - rss_before_kb) / len(r.sockets), 1) if r.sockets else None
    )


async def _load_window(r: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """The producers for ``--duration`` seconds; the CPU snapshots at both ends of the window."""
    args = r.args
    rate = args.rate / args.producers if args.rate else None
    start = time.monotonic()
    end = start + args.duration
    r.stats.window = (start, end)
    r.figures["profilers"] = start_profilers(r.stack, args.duration, Path(args.profile)) if args.profile else []
    before = r.meter.snapshot()
    if r.procs is not None:
        r.procs.go(start, end)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        after = r.meter.snapshot()
        await r.procs.collect(r.stats, args.request_timeout + 30)
    else:
        indices = list(range(args.producers))
        by_user = r.by_user
        work = asyncio.create_task(
            run_producers(indices, r.stack.gateway_urls, r.plan, r.stats, end, rate, args.request_timeout,
                          lambda user: by_user[user].open)
        )
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        after = r.meter.snapshot()
        await work
    return before, after


async def _drain(stats: Stats, timeout_s: float) -> list[tuple[str, str]]:
    """Stragglers: wait (bounded) until every accepted notification reached each recipient whose socket is
    still open. Returns those still missing."""
    lost = [
        (nid, u)
        for nid, sent in stats.accepted.items()
        for u in sent.online
        if (nid, u) not in stats.arrivals and u not in stats.closed_sockets
    ]
    deadline = time.monotonic() + timeout_s
    while lost and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        lost = [k for k in lost if k not in stats.arrivals and k[1] not in stats.closed_sockets]
    return lost


async def _drive(r: Run) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, str]]]:
    """The idle figures, the load window and the drain; the client processes are stopped whatever happens."""
    args = r.args
    rss_before_kb = r.meter.gateway_rss_kb()
    t_open = time.monotonic()
    if not args.ingest_only and args.sockets:
        r.sockets = await open_sockets(r.plan.online_users, r.stack.gateway_urls, r.stats, args.connect_timeout)
    r.figures["socket_open_s"] = round(time.monotonic() - t_open, 2)
    rate = args.rate / args.producers if args.rate else None
    opts = {"rate": rate, "request_timeout": args.request_timeout}
    if args.client_procs > 1:
        r.procs = ClientProcs(args.client_procs, args.producers, r.stack.gateway_urls, r.plan, opts)
    try:
        if r.procs is not None:
            await r.procs.ready(args.connect_timeout)
            r.meter.loadgen_pids = r.procs.pids
        await _idle_figures(r, rss_before_kb)
        before, after = await _load_window(r)
        stopped = time.monotonic()
        lost = await _drain(r.stats, args.drain_timeout)
        r.figures["drain_s"] = round(time.monotonic() - stopped, 2)
        for p in r.figures.pop("profilers"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
    finally:
        if r.procs is not None:
            r.procs.stop()
    return before, after, lost


def _latencies(stats: Stats) -> dict[str, Any]:
    """Every expected (notification, online recipient) pair, and the latencies of those that arrived."""
    expected = [(nid, u) for nid, sent in stats.accepted.items() for u in sent.online]
    on_closed = sum(1 for nid, u in expected if u in stats.closed_sockets and (nid, u) not in stats.arrivals)
    e2e, after_202 = [], []
    for nid, u in expected:
        t = stats.arrivals.get((nid, u))
        if t is not None:
            sent = stats.accepted[nid]
            e2e.append(t - sent.t0)
            after_202.append(t - sent.t202)
    return {
        "expected_live": len(expected),
        "missing_on_closed_sockets": on_closed,
        "e2e_latency_ms": percentiles(e2e),
        "after_202_latency_ms": percentiles(after_202),
        "arrived_before_202": sum(1 for v in after_202 if v < 0),
    }


def _config(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    return {
        "mode": "ingest-only" if args.ingest_only else ("fanout" if args.fanout else "live"),
        "gateways": args.gateways,
        "stream_workers": args.stream_workers,
        "retry_workers": args.retry_workers,
        "duration_s": args.duration,
        "sockets": 0 if args.ingest_only else args.sockets,
        "producers": args.producers,
        "recipients": plan.recipients,
        "batch": plan.batch,
        "offline_share": plan.offline_share,
        "rate_limit": args.rate,
        "client_procs": args.client_procs,
        "stores": "external" if os.environ.get("NOTIFLOW_DATABASE_URL") else "embedded",
    }


def _delivery_figures(stats: Stats, window: float) -> dict[str, Any]:
    return {
        "accepted": sum(1 for _ in stats.accepted),
        "accepted_per_s": round(stats.accepted_in_window / window, 1),
        "recipients_per_s": round(stats.recipients_in_window / window, 1),
        "deliveries_per_s": round(stats.arrivals_in_window / window, 1),
        "deliveries_total": len(stats.arrivals),
        "duplicates": stats.duplicates,
        "acks_sent": stats.acks_sent,
        "closed_sockets": len(stats.closed_sockets),
        "closed_reasons": dict(Counter(stats.closed_sockets.values())),
        "status_202": stats.statuses.get(202, 0),
        "status_429": stats.statuses.get(429, 0),
        "status_503": stats.statuses.get(503, 0),
        "status_other": {str(k): v for k, v in stats.statuses.items() if k not in (202, 429, 503)},
        "errors": dict(stats.errors),
        "post_latency_ms": percentiles(stats.post_latency),
    }


async def run(args: argparse.Namespace, stack: DevStack, database_url: str) -> dict[str, Any]:
    n_sockets = 0 if args.ingest_only else args.sockets
    plan = Plan([f"u{i}" for i in range(n_sockets)], [f"off{i}" for i in range(args.offline_users)],
                args.fanout or args.recipients, 1.0 if args.ingest_only else args.offline_share, args.batch)
    r = Run(args, stack, Stats(), CpuMeter(stack), plan)
    before, after, lost = await _drive(r)
    # Every received frame was acked: once the acks settle, nothing should be left `dispatched`.
    acks_dropped = await settled_dispatched(database_url, 20.0) if r.sockets else 0
    for s in r.sockets:
        await s.close()
    cpu = CpuMeter.delta(before, after)
    return {
        "config": _config(args, plan),
        **_delivery_figures(r.stats, args.duration),
        **_latencies(r.stats),
        **r.figures,
        "missing": len(lost),
        "acks_dropped": acks_dropped,
        "server_warnings": server_warnings(stack.log_dir),
        "cpu": cpu,
        # CPU cost per accepted notification, by role: unlike rates, barely moved by other load on the machine.
        "cpu_ms_per_notification": {
            k: round(1000 * v / max(r.stats.accepted_in_window, 1), 3) for k, v in cpu["cpu_s"].items()
        },
        "db_status": db_status_counts(database_url),
    }
