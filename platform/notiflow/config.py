"""Settings: one object, built once at start-up and passed down.

Every field reads ``NOTIFLOW_<NAME>`` from the environment; command-line flags override it.
Each field documents its unit and its default. The names in SPEC §1 are part of the contract.
"""

from __future__ import annotations

import os
import uuid
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_node_id() -> str:
    return f"{os.uname().nodename.split('.')[0]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    """Every setting of every notiflow process."""

    model_config = SettingsConfigDict(env_prefix="NOTIFLOW_", extra="ignore")

    # --- where things are -------------------------------------------------------------------
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

    # --- retries and the DLQ ----------------------------------------------------------------
    max_retries: int = Field(5, ge=0, description="Retries after the first attempt before the DLQ. Default 5.")
    retry_base_ms: int = Field(1000, ge=1, description="Full-jitter backoff base, milliseconds. Default 1000.")
    retry_cap_ms: int = Field(300_000, ge=1, description="Backoff cap, milliseconds. Default 300000.")
    poison_max_deliveries: int = Field(
        5, ge=1, description="Times a stream entry may be claimed before it is parked as poison. Default 5."
    )

    # --- presence ---------------------------------------------------------------------------
    presence_ttl_s: float = Field(
        15, gt=0, description="Seconds a dead node's users may still count as online. Default 15."
    )

    # --- webhooks ---------------------------------------------------------------------------
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts (host or host:port) that webhook_url may name, comma-separated. Default empty.",
    )
    webhook_secret: str = Field(
        "notiflow-dev-secret", description="HMAC-SHA256 key for the webhook-signature header."
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook call, seconds. Default 5.")
    webhook_retry_rate_per_host: int = Field(
        20, ge=1, description="Webhook retries per second per downstream host, across all workers; first "
        "attempts are not limited, retries over it wait without using an attempt. Default 20.",
    )
    webhook_concurrency: int = Field(
        64, ge=1, description="Webhook calls in flight per stream worker. Default 64."
    )

    # --- ingestion --------------------------------------------------------------------------
    stream_max_backlog: int = Field(
        100_000, ge=1, description="Stream entries over which ingestion answers 429. Default 100000."
    )
    ingest_batch_max: int = Field(
        500, ge=1, description="Requests committed together in one ingest transaction. Default 500."
    )
    fanout_chunk: int = Field(
        500, ge=1, description="Recipients carried by one stream entry. Default 500."
    )
    max_body_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, description="Largest request body accepted, bytes. Default 2 MiB."
    )
    # --- authentication (SPEC §7) -----------------------------------------------------------
    auth: Literal["on", "off"] | None = Field(
        None, description="`off` runs a gateway with no authentication (it warns every minute). Unset or `on`: "
        "a gateway refuses to start when no JWT key, no bootstrap key and no stored API key exists. Default unset.",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bootstrap API keys, comma-separated; each holds every scope (send, read, admin). "
        "Default empty.",
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 key verifying end users' tokens. Default unset."
    )
    jwt_public_key: SecretStr | None = Field(
        None, description="PEM public key (RSA: RS256, EC: ES256) verifying end users' tokens. Default unset."
    )
    jwt_audience: str | None = Field(None, description="Required `aud` of end users' tokens. Default unset (any).")
    jwt_issuer: str | None = Field(None, description="Required `iss` of end users' tokens. Default unset (any).")
    jwt_leeway_s: float = Field(
        10.0, ge=0, le=300, description="Clock skew allowed on `exp`/`nbf`/`iat`, seconds. Default 10."
    )
    auth_off_warning_s: float = Field(
        60.0, gt=0, description="Period of the warning a gateway logs while auth is off, seconds. Default 60."
    )

    # --- stream worker ----------------------------------------------------------------------
    worker_batch: int = Field(200, ge=1, description="Stream entries read per XREADGROUP. Default 200.")
    worker_block_ms: int = Field(1000, ge=1, description="XREADGROUP block time, milliseconds. Default 1000.")
    reclaim_idle_ms: int = Field(
        30_000, ge=100, description="Idle time after which another consumer's entry is reclaimed, ms. Default 30000."
    )
    reclaim_interval_s: float = Field(5.0, gt=0, description="How often idle entries are reclaimed, s. Default 5.")

    # --- retry worker and reconciler --------------------------------------------------------
    retry_poll_ms: int = Field(200, ge=10, description="Retry ZSET poll period, milliseconds. Default 200.")
    retry_batch: int = Field(500, ge=1, description="Due retries moved per Lua call. Default 500.")
    reconcile_interval_s: float = Field(2.0, gt=0, description="Reconciler period, seconds. Default 2.")
    stuck_after_s: float = Field(
        120.0, gt=0, description="Age after which pending/retrying work is put back on Redis, s. Default 120."
    )
    outbox_grace_s: float = Field(
        5.0, gt=0, description="Age after which committed work not yet in the stream is re-enqueued, s. Default 5."
    )

    # --- gateway sockets --------------------------------------------------------------------
    ws_queue_max: int = Field(
        1000, ge=1, description="Frames queued per socket before it is closed as too slow. Default 1000."
    )
    ws_ping_interval_s: float = Field(20.0, gt=0, description="WebSocket ping frame period, s. Default 20.")
    ws_ping_timeout_s: float = Field(20.0, gt=0, description="Pong wait before a peer is dead, s. Default 20.")

    # --- process lifecycle ------------------------------------------------------------------
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="Drain time for in-flight work at shutdown before cancelling, s. Default 10."
    )
    pg_pool_max: int = Field(10, ge=1, description="PostgreSQL connections per process. Default 10.")
    redis_pool_max: int = Field(
        64, ge=1, description="Redis connections per process; a command that finds them all busy waits for "
        "one (up to REDIS_POOL_TIMEOUT_S) instead of failing. Default 64.",
    )
    redis_pool_timeout_s: float = Field(
        5.0, gt=0, description="Longest wait for a free Redis connection before the command fails as "
        "unavailable, s. Default 5.",
    )
    log_level: str = Field("INFO", description="Log level. Default INFO.")

    # --- test-only fault switches (see conformance/selftest) --------------------------------
    fault_drop_ws_every: int = Field(
        0, ge=0, description="TEST ONLY: drop every Nth notification frame a gateway sends. 0 = never."
    )

    @field_validator("webhook_allowed_hosts", "api_keys", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_public_key", mode="before")
    @classmethod
    def _pem_newlines(cls, value: Any) -> Any:
        # A PEM in one environment line often arrives with backslash-n for its line breaks.
        if isinstance(value, str) and "\\n" in value and "\n" not in value:
            return value.replace("\\n", "\n")
        return value

    @property
    def auth_configured(self) -> bool:
        """True when the environment names a way to authenticate (stored API keys are checked at start)."""
        return bool(self.jwt_secret or self.jwt_public_key or self.api_keys)

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
