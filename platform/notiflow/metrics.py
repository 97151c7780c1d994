"""Prometheus metrics of a gateway process, served at GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "notiflow_http_requests_total", "HTTP requests by route and status", ["route", "status"], registry=REGISTRY
)
ACCEPTED = Counter("notiflow_notifications_accepted_total", "Notifications accepted (202)", registry=REGISTRY)
REJECTED = Counter(
    "notiflow_notifications_rejected_total", "Ingest requests answered with an error", ["status"], registry=REGISTRY
)
INGEST_SECONDS = Histogram(
    "notiflow_ingest_seconds", "Time from request to 202", registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SOCKETS = Gauge("notiflow_websockets", "Open WebSockets on this node", registry=REGISTRY)
FRAMES = Counter("notiflow_ws_frames_sent_total", "Notification frames queued to sockets", registry=REGISTRY)
