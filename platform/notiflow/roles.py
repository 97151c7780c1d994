"""Settings per role: each component receives a frozen view of just its part of ``Settings``.

``Settings`` (config.py) stays the one object parsed from the environment, with the flat ``NOTIFLOW_*``
names, their units and defaults. A view is a frozen dataclass whose fields are named as the ``Settings``
fields they copy, each listed once, here; ``view(Cls, settings)`` builds it. To give a component another
setting: add the field to its group of ``Settings`` (config.py, config_gateway.py or config_workers.py;
documented there), then its name and type to the view(s) of the components that read it (test_roles.py
checks that each view field is a ``Settings`` field of the same type).
Process-level settings (store URLs, pool sizes, ports of the process itself) stay with the wiring, which
reads ``Settings`` directly; the services and workers it builds get only their view.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import SecretStr

from notiflow.config import Settings

V = TypeVar("V")


def view(cls: type[V], settings: Settings) -> V:
    """``cls`` (a view dataclass) with each field copied from the ``Settings`` field of the same name; lists
    are copied, so that the view shares nothing mutable with ``settings``."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(settings, f.name)
        values[f.name] = list(value) if isinstance(value, list) else value
    return cls(**values)


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewaySettings:
    """The gateway's services and transport: ingestion, the rate limit, sessions, sockets, HTTP."""

    node_id: str
    host: str
    allowed_hosts: list[str]
    max_body_bytes: int
    stream_max_backlog: int
    ingest_batch_max: int
    fanout_chunk: int
    idempotency_window_s: int
    webhook_allowed_hosts: list[str]
    ingest_rate_per_s: float
    ingest_burst: int
    presence_ttl_s: float
    stats_interval_s: float
    shutdown_grace_s: float
    auth_off_warning_s: float
    ws_queue_max: int
    ws_max_ack_ids: int
    ws_max_acks_in_flight: int
    ws_ack_gather_ms: int
    dispatch_record_delay_ms: int
    ws_max_sockets_per_user: int
    ws_max_sockets: int
    allowed_origins: list[str]
    sse_keepalive_s: float
    retention_days: float


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerSettings:
    """The stream and retry workers, the delivery service and the reconciler."""

    node_id: str
    max_retries: int
    retry_base_ms: int
    retry_cap_ms: int
    poison_max_deliveries: int
    worker_batch: int
    worker_block_ms: int
    reclaim_idle_ms: int
    reclaim_interval_s: float
    dispatch_record_delay_ms: int
    webhook_concurrency: int
    webhook_retry_rate_per_host: int
    webhook_timeout_s: float
    retry_poll_ms: int
    retry_batch: int
    reconcile_interval_s: float
    stuck_after_s: float
    outbox_grace_s: float
    receipt_poll_ms: int
    receipt_batch: int
    fanout_chunk: int
    topic_page: int
    idempotency_window_s: int
    stats_interval_s: float
    shutdown_grace_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookSettings:
    """The downstream client: where it may call, how long, how many at once, and how it signs."""

    webhook_allowed_hosts: list[str]
    webhook_allow_private: bool
    webhook_timeout_s: float
    webhook_concurrency: int
    webhook_secrets: list[str]


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthSettings:
    """Authentication: whether it is on, bootstrap API keys, and end users' tokens."""

    auth: Literal["on", "off"] | None
    auth_configured: bool
    api_keys: list[SecretStr]
    jwt_secret: SecretStr | None
    jwt_public_key: SecretStr | None
    jwt_audience: str | None
    jwt_issuer: str | None
    jwt_max_lifetime_s: float
    jwt_leeway_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RetentionSettings:
    """Retention of settled notifications."""

    retention_days: float
    retention_batch: int
    retention_interval_s: float
    idempotency_window_s: int


def gateway(settings: Settings) -> GatewaySettings:
    return view(GatewaySettings, settings)


def worker(settings: Settings) -> WorkerSettings:
    return view(WorkerSettings, settings)


def webhooks(settings: Settings) -> WebhookSettings:
    return view(WebhookSettings, settings)


def auth(settings: Settings) -> AuthSettings:
    return view(AuthSettings, settings)


def retention(settings: Settings) -> RetentionSettings:
    return view(RetentionSettings, settings)
