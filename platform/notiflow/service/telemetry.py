"""Telemetry: the periodic task every process runs beside its work.

Each round (every ``stats_interval_s``) it
1. reads the store figures (stream length, pending, lag, retry depth, DLQ size) in one Redis pipeline
   and one SQL count, and sets the gauges: gauges are never read from the stores per scrape;
2. publishes this node's figures (its process's counters, its sockets and users) to the stats board
   in Redis, where the dashboard of any gateway reads every node's;
3. hands the errors logged since the last round to the board (the dashboard's "last errors").

A store outage only skips a round: telemetry never stops a process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import time
from typing import Any, Protocol

from notiflow import metrics
from notiflow.errors import StoreUnavailable
from notiflow.lifecycle import cancel
from notiflow.roles import GatewaySettings, WorkerSettings
from notiflow.service.ports import Record, WorkLog
from notiflow.store import dlq as dlq_sql
from notiflow.store.pool import pg_errors
from notiflow.streams.stats import StatsBoard

log = logging.getLogger(__name__)

# The process these figures come from: nodes of one process (tests run several) share its counters.
CLOSE_WAIT_S = 3.0
PROCESS = f"{os.uname().nodename}-{os.getpid()}"


class Sockets(Protocol):
    def sockets(self) -> int: ...
    def users(self) -> list[str]: ...


class RecentErrors(logging.Handler):
    """Keeps the last warnings and errors this process logged, for the dashboard (bounded)."""

    def __init__(self, keep: int = 200) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        error = getattr(record, "error", None)
        self.records.append({
            "ts": record.created, "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage()[:300], "error": None if error is None else str(error)[:500],
        })

    def drain(self) -> list[dict[str, Any]]:
        out = list(self.records)
        self.records.clear()
        return out


_RECENT = RecentErrors()


def recent_errors() -> RecentErrors:
    """The process's handler, attached to the root logger once."""
    root = logging.getLogger()
    if _RECENT not in root.handlers:
        root.addHandler(_RECENT)
    return _RECENT


def json_buckets(buckets: list[tuple[float, float]]) -> list[list[float | str]]:
    """Histogram buckets for JSON, which has no infinity: the last bound is written ``"+Inf"``."""
    return [[le if math.isfinite(le) else "+Inf", count] for le, count in buckets]


def process_figures() -> dict[str, Any]:
    """This process's counters as the dashboard sums them (totals since the process started)."""
    snap = metrics.Snapshot()
    return {
        "accepted": snap.total("notiflow_notifications_accepted_total"),
        "refused": snap.total("notiflow_notifications_refused_total"),
        "frames_sent": snap.total("notiflow_ws_frames_sent_total"),
        "acks": snap.total("notiflow_acks_total"),
        "attempts": snap.total("notiflow_delivery_attempts_total"),
        "attempts_failed": metrics.value("notiflow_delivery_attempts_total", channel="socket", outcome="failed")
        + metrics.value("notiflow_delivery_attempts_total", channel="webhook", outcome="failed"),
        "retries_moved": snap.total("notiflow_retries_moved_total"),
        "pg_errors": snap.total("notiflow_postgres_errors_total"),
        "redis_errors": snap.total("notiflow_redis_errors_total"),
        "latency_buckets": json_buckets(snap.buckets("notiflow_delivery_latency_seconds")),
    }


class Telemetry:
    """One per node. ``read_stores`` is set where the store gauges are wanted (gateways, retry workers)."""

    def __init__(
        self, *, settings: GatewaySettings | WorkerSettings, work: WorkLog, pool: Record, board: StatsBoard, role: str,
        read_stores: bool, sockets: Sockets | None = None,
    ) -> None:
        self._s = settings
        self._work = work
        self._pool = pool
        self.board = board
        self._role = role
        self._read_stores = read_stores
        self._sockets = sockets
        self._errors = recent_errors()
        self.store: dict[str, int] = {}
        self.store_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._loop(), name="telemetry")

    async def close(self, grace_s: float) -> None:
        """Stop after the round in flight (within ``grace_s``, at most CLOSE_WAIT_S), cancelling it only if
        it hangs."""
        self._stop.set()
        if self._task:
            done, _ = await asyncio.wait({self._task}, timeout=min(grace_s, CLOSE_WAIT_S))
            if not done:
                await cancel([self._task])

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
            except StoreUnavailable as exc:
                log.debug("telemetry round skipped", extra={"error": str(exc)})
            except Exception:
                log.exception("telemetry round crashed")
            # An event rather than a bare cancel: a cancellation landing inside a Redis call may be
            # absorbed by the client, and the loop would run on.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self._s.stats_interval_s)

    async def tick(self) -> None:
        if self._read_stores:
            try:
                await self.refresh_store()
            except StoreUnavailable as exc:
                # The node's own figures are still published: in an outage they matter most.
                log.debug("store figures not refreshed", extra={"error": str(exc)})
        if self._sockets is not None:
            metrics.SOCKETS.set(self._sockets.sockets())
            metrics.USERS.set(len(self._sockets.users()))
        figures: dict[str, Any] = {
            "node": self._s.node_id, "role": self._role, "process": PROCESS, "at": time.time(),
            **process_figures(),
        }
        if self._sockets is not None:
            figures["sockets"] = self._sockets.sockets()
            figures["users"] = len(self._sockets.users())
        errors = [{**e, "node": self._s.node_id} for e in self._errors.drain()]
        try:
            await self.board.publish(self._s.node_id, figures, errors)
        except StoreUnavailable:
            # Not lost for the next round (bounded by the handler's deque).
            self._errors.records.extend(errors)
            raise

    async def refresh_store(self) -> dict[str, int]:
        figures = await self._work.figures()
        async with pg_errors("dlq count"), self._pool.acquire() as conn:
            figures["dlq_entries"] = await dlq_sql.count_open(conn)
        metrics.STORE.update(figures)
        self.store, self.store_at = figures, time.time()
        return figures
