"""Settings: one object, built once at start-up and passed down.

Every field reads ``NOTIFLOW_<NAME>`` from the environment; command-line flags override it.
Each field documents its unit and its default. The names in SPEC §1 are part of the contract.

``Settings`` is composed of groups of fields: the process's own here (where the stores are, processes,
operators, lifecycle), the gateway's in config_gateway.py, the workers' in config_workers.py. The
validators that span groups stay on ``Settings``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Self

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from notiflow.config_gateway import AuthFields, IngestFields, PresenceFields, SocketFields
from notiflow.config_workers import (
    ReceiptFields,
    RetryFields,
    RetryWorkerFields,
    StreamWorkerFields,
    WebhookFields,
)


def _default_node_id() -> str:
    return f"{os.uname().nodename.split('.')[0]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LocationFields(BaseModel):
    """Where things are: the stores, the listening address, this node's name, the Redis keys."""

    redis_url: str | None = Field(
        None, description="Redis URL (redis:// or unix://). Unset under `notiflow dev` means embedded."
    )
    database_url: str | None = Field(
        None, description="PostgreSQL DSN. Unset under `notiflow dev` means embedded."
    )
    host: str = Field("127.0.0.1", description="Interface a gateway listens on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port a gateway listens on. Default 8000.")
    node_id: str = Field(
        default_factory=_default_node_id,
        description="Name of this gateway node or worker, unique per process. Default: host-pid-random.",
    )
    stream_key: str = Field("notifications:stream", description="Redis stream carrying the work.")
    key_prefix: str = Field("notiflow", description="Prefix of every other Redis key this process uses.")
    redis_cluster: bool = Field(
        False,
        description="Run against a Redis Cluster (Redis >= 7); NOTIFLOW_REDIS_URL names any one node as the seed. "
        "Default false: one standalone Redis.",
    )
    stream_partitions: int = Field(
        1, ge=1, le=1024,
        description="Work partitions: users are spread over them by a hash of their id, and each has its own "
        "stream, retry schedule, presence and backlog counter in one cluster slot. Default 1. Recorded in Redis "
        "at the first start; a process started with another value refuses to run (docs/cluster.md: changing it).",
    )

    @property
    def partitioned(self) -> bool:
        """Partition keys carry their hash tag (a cluster, or more than one partition); otherwise the keys
        keep the names of a single standalone Redis."""
        return self.redis_cluster or self.stream_partitions > 1

    @property
    def redis_url_required(self) -> str:
        if not self.redis_url:
            raise RuntimeError("NOTIFLOW_REDIS_URL is not set (only `notiflow dev` starts an embedded Redis)")
        return self.redis_url

    @property
    def database_url_required(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "NOTIFLOW_DATABASE_URL is not set (only `notiflow dev` starts an embedded PostgreSQL)"
            )
        return self.database_url

    def key(self, *parts: str) -> str:
        """A namespaced Redis key: ``key("presence", "alice")`` -> ``notiflow:presence:alice``."""
        return ":".join((self.key_prefix, *parts))


class ProcessFields(BaseModel):
    """Processes per command."""

    gateway_processes: int = Field(
        1, ge=1, le=64, description="Processes one `notiflow gateway` runs, each a node of its own, sharing "
        "the port (SO_REUSEPORT). Default 1 (`notiflow dev` picks its own default, see the README).",
    )
    stream_worker_processes: int = Field(
        1, ge=1, le=64, description="Processes one `notiflow stream-worker` runs, each a consumer of its own. "
        "Default 1.",
    )


class OperatorFields(BaseModel):
    """Operators: metrics, the dashboard, retention."""

    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Port of a stream or retry worker's /metrics and /healthz (a gateway "
        "uses its HTTP port). With --processes N the parent serves every copy's metrics here, each sample labelled "
        "copy=\"p<i>\" (a worker's /healthz is 200 only when every copy's is), and copy i serves its own on this "
        "port + 1 + i. 0 turns it off; `notiflow dev` gives each process free ports. Default 9464.",
    )
    stats_interval_s: float = Field(
        1.0, gt=0, description="Period of the telemetry task: store gauges refreshed and this node's figures "
        "published for the dashboard, s. Default 1.",
    )
    retention_days: float = Field(
        30, gt=0, description="Retention period, days. Every notification expires: after its ttl_seconds, which may "
        "not exceed this period (422 ttl_too_long), else after this period. A day's partitions of the record "
        "(notifications, deliveries, attempts, with their DLQ rows) are dropped whole once the day is this period "
        "old and every notification in it has expired. Default 30.",
    )
    retention_batch: int = Field(
        5000, ge=1, description="Parked poison entries removed per retention statement (one short transaction "
        "each; the record itself goes by whole partitions). Default 5000.",
    )
    retention_interval_s: float = Field(
        60.0, gt=0, description="Pause between retention rounds when nothing is left to remove, s. Default 60.",
    )


class LifecycleFields(BaseModel):
    """Process lifecycle: shutdown, connection pools, logging."""

    shutdown_grace_s: float = Field(
        10.0, ge=0,
        description=(
            "One period for a process's whole stop: a gateway's requests in flight, then every drain (commits,"
            " acks, hand-offs, webhook calls); what still runs after it is cancelled, and closing the connections"
            " takes at most 1 s more, s. Default 10."
        ),
    )
    pg_pool_max: int = Field(10, ge=1, description="PostgreSQL connections per process. Default 10.")
    pg_lock_timeout_ms: int = Field(
        5000, ge=0, description="Longest a statement of this process waits for a row lock held by another "
        "transaction (PostgreSQL lock_timeout on its connections), milliseconds. Past it the statement fails and "
        "its request is answered 503 store_busy with nothing stored (a worker retries later). 0 waits without "
        "limit. Default 5000.",
    )
    pg_idle_in_transaction_timeout_ms: int = Field(
        20000, ge=0, description="Longest a connection of this process may sit idle inside an open transaction "
        "(PostgreSQL idle_in_transaction_session_timeout), milliseconds. Past it PostgreSQL ends the session and "
        "rolls its transaction back, releasing its locks: a stalled process cannot hold users' rows (and every "
        "ingest for them) for longer. Must exceed the longest Redis call made inside a transaction (15 s). "
        "0 means no limit. Default 20000.",
    )
    redis_pool_max: int = Field(
        64, ge=1, description="Redis connections per process; a command that finds them all busy waits for "
        "one (up to REDIS_POOL_TIMEOUT_S) instead of failing. Default 64.",
    )
    redis_pool_timeout_s: float = Field(
        5.0, gt=0, description="Longest wait for a free Redis connection before the command fails as "
        "unavailable, s. Default 5.",
    )
    log_level: str = Field("INFO", description="Log level. Default INFO.")


# The groups are listed last-first: pydantic orders the fields base class first, so the fields (and the
# table of docs/contract.md, in their order) read location, retries, presence, ... lifecycle.
class Settings(
    LifecycleFields,
    OperatorFields,
    SocketFields,
    ProcessFields,
    ReceiptFields,
    RetryWorkerFields,
    StreamWorkerFields,
    AuthFields,
    IngestFields,
    WebhookFields,
    PresenceFields,
    RetryFields,
    LocationFields,
    BaseSettings,
):
    """Every setting of every notiflow process."""

    # hide_input_in_errors: a refused value may be a secret, and start-up errors are printed.
    model_config = SettingsConfigDict(env_prefix="NOTIFLOW_", extra="ignore", hide_input_in_errors=True)

    @field_validator("webhook_allowed_hosts", "api_keys", "allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # The two checks that span groups run in this order (the first that fails is the error reported).
    @model_validator(mode="after")
    def _webhooks_need_a_secret(self) -> Self:
        if self.webhook_allowed_hosts and not self.webhook_secrets:
            raise ValueError(
                "NOTIFLOW_WEBHOOK_ALLOWED_HOSTS is set but NOTIFLOW_WEBHOOK_SECRET is not: webhooks would go "
                "out unsigned (generate one: python -c \"import base64,secrets; "
                "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\")"
            )
        return self

    @model_validator(mode="after")
    def _partition_keys_have_no_braces(self) -> Self:
        if (self.redis_cluster or self.stream_partitions > 1) and any(
            c in k for k in (self.key_prefix, self.stream_key) for c in "{}"
        ):
            raise ValueError(
                "NOTIFLOW_KEY_PREFIX and NOTIFLOW_STREAM_KEY may not contain { or } when the work is "
                "partitioned: each partition's keys carry the hash tag {p<n>}"
            )
        return self
