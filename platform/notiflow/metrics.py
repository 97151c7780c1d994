"""Prometheus metrics of every notiflow process (one registry per process).

Gateways serve them at ``GET /metrics`` on their HTTP port; stream and retry workers on their own
``NOTIFLOW_METRICS_PORT`` (see ``serve``), beside ``GET /healthz``. The parent of ``--processes N`` copies
serves all of theirs there instead, labelled by copy (fanin.py), gateway copies' too: behind SO_REUSEPORT the
HTTP port's ``/metrics`` reaches one copy at random. Counters end in ``_total``, durations are ``_seconds``
histograms. Gauges read from the stores (stream length, lag, retry
depth, DLQ size) are set by the periodic telemetry task (``service/telemetry.py``), never per scrape.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# No *_created series: they double the exposition and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)


class CountedHistogram(Collector):
    """An unlabelled histogram whose observations carry a count: one call stands for ``count`` equal
    values (a fan-out writes one notification's frame to many sockets at one moment, and an observation
    per frame cost more than the rest of the frame's bookkeeping). Updated from the event loop's thread
    only; a scrape from another thread may see one observation's sum without its buckets."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = tuple(sorted(float(b) for b in buckets))
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf's
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float, count: int = 1) -> None:
        # Prometheus buckets are upper bounds inclusive: the first bound >= value.
        self._counts[bisect.bisect_left(self._bounds, value)] += count
        self._sum += value * count

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._doc)]

    def collect(self) -> Iterable[Metric]:
        cumulative = list(itertools.accumulate(self._counts))
        labels = [repr(b) for b in self._bounds] + ["+Inf"]  # as prometheus_client spells them: 1.0, 0.005
        yield HistogramMetricFamily(self._name, self._doc, buckets=list(zip(labels, cumulative, strict=True)),
                                    sum_value=self._sum)


# Accept to frame written: most deliveries take milliseconds, a queued one seconds, a resync minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# --- gateway: HTTP and ingest --------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "notiflow_http_requests_total", "HTTP requests by route and status", ["route", "status"], registry=REGISTRY
)
ACCEPTED = Counter("notiflow_notifications_accepted_total", "Notifications accepted (202)", registry=REGISTRY)
REFUSED = Counter(
    "notiflow_notifications_refused_total",
    "Ingest requests answered with an error, by the error body's code (backlog_full, invalid_request, ...)",
    ["reason"], registry=REGISTRY,
)
INGEST_SECONDS = Histogram(
    "notiflow_ingest_seconds", "Time from request to 202", registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# --- gateway: sockets ----------------------------------------------------------------------------
SOCKETS = Gauge("notiflow_websockets", "Open WebSockets on this node", registry=REGISTRY)
USERS = Gauge("notiflow_connected_users", "Distinct users with at least one socket on this node", registry=REGISTRY)
FRAMES = Counter("notiflow_ws_frames_sent_total", "Notification frames written to sockets", registry=REGISTRY)
REPLACED = Counter(
    "notiflow_deliveries_replaced_total",
    "Deliveries replaced by a newer notification with the same collapse key for the same user", registry=REGISTRY,
)
ACKS = Counter(
    "notiflow_acks_total", "Deliveries acknowledged, by where the ack came from (socket, http)", ["via"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = CountedHistogram(
    "notiflow_delivery_latency_seconds",
    "From accept (the frame's created_at) to the frame written to a socket", LATENCY_BUCKETS, REGISTRY,
)

HANDOFFS_WRITTEN = Counter(
    "notiflow_handoffs_written_total",
    "Socket hand-offs written to the record, by state: dispatched (by gateways, for the frames they pushed), "
    "offline (by stream workers, for the deliveries no node heard; by gateways, for users they no longer held)",
    ["status"], registry=REGISTRY,
)
HANDOFFS_SETTLED = Counter(
    "notiflow_handoffs_settled_total",
    "Socket hand-offs a gateway did not write because the delivery was acknowledged within "
    "NOTIFLOW_DISPATCH_RECORD_DELAY_MS", registry=REGISTRY,
)

# --- stream worker ------------------------------------------------------------------------------
ATTEMPTS = Counter(
    "notiflow_delivery_attempts_total",
    "Delivery attempts recorded, by channel (socket, webhook) and outcome (dispatched, offline, succeeded, "
    "failed, expired, poison)", ["channel", "outcome"], registry=REGISTRY,
)
ENTRIES = Counter(
    "notiflow_stream_entries_processed_total", "Stream entries processed and acknowledged", registry=REGISTRY
)
WEBHOOK_SECONDS = Histogram(
    "notiflow_webhook_call_seconds", "Duration of one webhook call, by result (ok, retry, rejected)", ["result"],
    registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# --- retry worker and reconciler ---------------------------------------------------------------
RETRIES_MOVED = Counter(
    "notiflow_retries_moved_total", "Due retries moved from the schedule back into the stream", registry=REGISTRY
)
REPAIRS = Counter(
    "notiflow_reconciler_repairs_total",
    "Work the reconciler put back or closed, by kind (rebuilt, outbox, stuck, expired, topics)", ["kind"],
    registry=REGISTRY,
)
RECEIPTS = Counter(
    "notiflow_receipts_total",
    "Delivery receipt events by result: sent (a 2xx answered), retried (a failed POST, sent again later), held "
    "(over the per-host budget, no attempt used), dropped (given up: retries used up, rejected, or notification "
    "gone)", ["result"], registry=REGISTRY,
)
RETENTION_REMOVED = Counter(
    "notiflow_retention_removed_total",
    "What retention removed: day partitions (partitions_dropped), idempotency key partitions "
    "(key_partitions_dropped), DLQ and poison rows (dlq, poison_entries)",
    ["table"], registry=REGISTRY,
)

# --- store figures (set by the telemetry task) -------------------------------------------------
STORE_GAUGES = {
    "stream_length": ("notiflow_stream_length", "Entries in the notifications stream (the backlog)"),
    "stream_pending": ("notiflow_stream_pending", "Stream entries read by a worker and not yet acknowledged"),
    "group_lag": ("notiflow_consumer_group_lag", "Stream entries not yet read by the consumer group"),
    "retry_scheduled": ("notiflow_retry_scheduled", "Retries waiting in the retry schedule (ZSET)"),
    "dlq_entries": ("notiflow_dlq_entries", "DLQ entries not replayed"),
}


class StoreFigures(Collector):
    """The store gauges, exported only by processes whose telemetry reads them (gateways, retry workers):
    a stream worker exports none rather than zeros that would read as an empty backlog."""

    def __init__(self) -> None:
        self.figures: dict[str, int] = {}

    def update(self, figures: dict[str, int]) -> None:
        self.figures = dict(figures)

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the set of families depends on whether figures were read yet

    def collect(self) -> Iterable[Metric]:
        for key, value in self.figures.items():
            if key in STORE_GAUGES:
                name, doc = STORE_GAUGES[key]
                yield GaugeMetricFamily(name, doc, value=value)


STORE = StoreFigures()
REGISTRY.register(STORE)

# --- store errors (every process) --------------------------------------------------------------
PG_ERRORS = Counter(
    "notiflow_postgres_errors_total", "PostgreSQL calls that failed as unavailable, by operation", ["operation"],
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "notiflow_redis_errors_total", "Redis calls that failed as unavailable, by operation", ["operation"],
    registry=REGISTRY,
)


# Known label values start at 0, so that every series exists before its first event (rate() needs both ends).
for _via in ("socket", "http"):
    ACKS.labels(_via)
for _reason in ("invalid_request", "malformed_json", "body_too_large", "payload_too_large", "backlog_full",
                "rate_limited", "unavailable", "unauthorized", "forbidden"):
    REFUSED.labels(_reason)
for _channel, _outcomes in (("socket", ("dispatched", "offline", "failed", "expired", "poison")),
                            ("webhook", ("succeeded", "failed", "expired", "poison"))):
    for _outcome in _outcomes:
        ATTEMPTS.labels(_channel, _outcome)
for _result in ("ok", "retry", "rejected"):
    WEBHOOK_SECONDS.labels(_result)
for _status in ("dispatched", "offline"):
    HANDOFFS_WRITTEN.labels(_status)


def value(name: str, **labels: str) -> float:
    """The current value of one sample of this process's registry (0 when absent)."""
    found = REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else float(found)


class Snapshot:
    """One pass over this process's registry: sums by sample name, and histogram buckets."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self._buckets: dict[str, dict[float, float]] = {}
        for metric in REGISTRY.collect():
            for sample in metric.samples:
                self.sums[sample.name] = self.sums.get(sample.name, 0.0) + sample.value
                if sample.name.endswith("_bucket"):
                    per = self._buckets.setdefault(sample.name.removesuffix("_bucket"), {})
                    bound = float(sample.labels["le"])
                    per[bound] = per.get(bound, 0.0) + sample.value

    def total(self, name: str) -> float:
        """The sum of a sample name over every label set (``name`` as exposed, e.g. with ``_total``)."""
        return self.sums.get(name, 0.0)

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets as (upper bound, count), ``+Inf`` last; summed over labels."""
        return sorted(self._buckets.get(name, {}).items())


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the process's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape on stderr is noise; the log is JSON


class HealthCheck(Protocol):
    """What answers ``/healthz``: (HTTP status, JSON body). A worker's ``health.Health``, or the parent of
    ``--processes`` copies asking each copy (``fanin.CopiesHealth``)."""

    def check(self) -> tuple[int, dict[str, Any]]: ...


def worker_app(health: HealthCheck | None, registry: CollectorRegistry = REGISTRY) -> Callable[..., Iterable[bytes]]:
    """The WSGI app of a metrics port: ``/healthz`` from ``health`` (404 without one), anything else
    ``registry``, as prometheus_client serves it (its own start_http_server serves nothing else)."""
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return exposition(environ, start_response)  # type: ignore[no-any-return]
        status, body = health.check() if health is not None else (404, {"status": "no health here"})
        reason = {200: "OK", 404: "Not Found"}.get(status, "Service Unavailable")
        start_response(f"{status} {reason}", [("Content-Type", "application/json")])
        return [orjson.dumps(body)]

    return app


@contextmanager
def serve(
    host: str, port: int, health: HealthCheck | None = None, registry: CollectorRegistry = REGISTRY
) -> Iterator[int | None]:
    """Serve ``registry`` (this process's by default) at ``http://host:port/metrics`` from a thread, and
    liveness at ``/healthz`` when ``health`` is given (a gateway copy serves metrics only).

    Port 0 turns it off. A port already in use is logged and the worker runs on without metrics:
    an observability problem must not stop delivery. Yields the port served, or None.
    """
    if port == 0:
        yield None
        return
    try:
        server = make_server(host, port, worker_app(health, registry), _ThreadingServer, _QuietHandler)
    except OSError as exc:
        log.warning("metrics port unavailable; metrics are off", extra={"port": port, "error": str(exc)})
        yield None
        return
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    log.info("metrics served", extra={"url": f"http://{host}:{port}/metrics"})
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
