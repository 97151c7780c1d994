"""Settings: one object, built once at start-up and passed down.

Every field reads ``NOTIFLOW_<NAME>`` from the environment; command-line flags override it.
Each field documents its unit and its default. The names in SPEC §1 are part of the contract.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

WHSEC_PREFIX = "whsec_"
WHSEC_MIN_BYTES = 24  # Standard Webhooks: secrets of 24 to 64 random bytes


def _check_whsec(secret: str) -> None:
    """A Standard Webhooks secret: ``whsec_`` + base64 of at least 24 bytes (never echoed in the error)."""
    if not secret.startswith(WHSEC_PREFIX):
        raise ValueError("each NOTIFLOW_WEBHOOK_SECRET must be whsec_ + base64 (Standard Webhooks)")
    try:
        key = base64.b64decode(secret.removeprefix(WHSEC_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a NOTIFLOW_WEBHOOK_SECRET is not valid base64 after whsec_") from None
    if len(key) < WHSEC_MIN_BYTES:
        raise ValueError(f"a NOTIFLOW_WEBHOOK_SECRET has {len(key)} bytes; at least {WHSEC_MIN_BYTES} are needed")


def _default_node_id() -> str:
    return f"{os.uname().nodename.split('.')[0]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    """Every setting of every notiflow process."""

    # hide_input_in_errors: a refused value may be a secret, and start-up errors are printed.
    model_config = SettingsConfigDict(env_prefix="NOTIFLOW_", extra="ignore", hide_input_in_errors=True)

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
    webhook_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks signing secrets, `whsec_` + base64 of at least 24 random bytes; several "
        "comma-separated during a rotation (each signs every call). Required when webhooks are allowed. Default unset.",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Let webhooks reach private, loopback and link-local addresses (tests and `notiflow dev`). "
        "Default false.",
    )
    webhook_timeout_s: float = Field(
        5.0, gt=0, description="Deadline of one whole webhook call (resolve, connect, send, read), seconds. Default 5."
    )
    webhook_retry_rate_per_host: int = Field(
        20, ge=1, description="Webhook retries per second per downstream host, across all workers; first "
        "attempts are not limited, retries over it wait without using an attempt. Default 20.",
    )
    webhook_concurrency: int = Field(
        64, ge=1, description="Webhook calls in flight per stream worker. Default 64."
    )

    # --- ingestion --------------------------------------------------------------------------
    stream_max_backlog: int = Field(
        100_000, ge=1, description="Backlog over which ingestion answers 429, in entries as written unbundled "
        "(a notification, or a fan-out chunk of FANOUT_CHUNK recipients; a bundle counts its notifications). "
        "Default 100000."
    )
    ingest_batch_max: int = Field(
        2000, ge=1, description="Notifications committed together in one ingest transaction (a batch request is "
        "never split), count. Default 2000.",
    )
    fanout_chunk: int = Field(
        500, ge=1, description="Recipients carried by one stream entry. Default 500."
    )
    topic_page: int = Field(
        5000, ge=1, le=50_000,
        description="Subscribers per page of a topic notification's expansion: one transaction inserts their "
        "deliveries and commits the expansion's progress. Default 5000.",
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
    jwt_audience: str | None = Field(
        None, description="Required `aud` of end users' tokens; required with NOTIFLOW_JWT_PUBLIC_KEY (the gateway "
        "refuses to start without it). Unset: a token that names any `aud` is refused. Default unset.",
    )
    jwt_issuer: str | None = Field(None, description="Required `iss` of end users' tokens. Default unset (any).")
    jwt_max_lifetime_s: float = Field(
        86_400, gt=0, description="Longest lifetime an end user's token may claim, seconds: a token whose `exp` is "
        "more than this after its `iat` (after now, when it has no `iat`) is refused, and so a socket opened with "
        "a token lives at most this long. Default 86400 (24 h).",
    )
    jwt_leeway_s: float = Field(
        10.0, ge=0, le=300, description="Clock skew allowed on `exp`/`nbf`/`iat`, seconds. Default 10."
    )
    auth_off_warning_s: float = Field(
        60.0, gt=0, description="Period of the warning a gateway logs while auth is off, seconds. Default 60."
    )
    ingest_rate_per_s: float = Field(
        100_000, gt=0, description="Deliveries per second one client identity (API key) may submit, across all "
        "gateways (a token bucket in Redis); a request costs one delivery per recipient, summed over its "
        "notifications. Over it, 429 rate_limited with Retry-After. Default 100000.",
    )
    idempotency_window_s: int = Field(
        86_400, ge=1, le=30 * 86_400, description="How long an Idempotency-Key holds, seconds: the same key (per "
        "API key) within it answers the first response and creates nothing; an older key no longer holds and may "
        "be used again. Keys are kept in one partition per UTC day, which retention drops once a window has passed "
        "since the day's end: give the gateways and retry workers the same value. Default 86400 (24 h).",
    )
    ingest_burst: int = Field(
        200_000, ge=1, description="Token bucket size of the ingest rate limit, deliveries: what one client may "
        "submit at once above its rate, and the most one request may cost (recipients summed over its "
        "notifications); a request over it is refused with 413 over_ingest_burst. Default 200000.",
    )

    # --- stream worker ----------------------------------------------------------------------
    worker_batch: int = Field(200, ge=1, description="Stream entries read per XREADGROUP. Default 200.")
    worker_block_ms: int = Field(1000, ge=1, description="XREADGROUP block time, milliseconds. Default 1000.")
    reclaim_idle_ms: int = Field(
        30_000, ge=100, description="Idle time after which another consumer's entry is reclaimed, ms. Default 30000."
    )
    reclaim_interval_s: float = Field(5.0, gt=0, description="How often idle entries are reclaimed, s. Default 5.")
    dispatch_record_delay_ms: int = Field(
        2000, ge=0, description="How long successful socket hand-offs (dispatched/offline) wait before they are "
        "written, coalesced, ms; acknowledged meanwhile, they need no write. Default 2000.",
    )

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

    # --- delivery receipts (status_url) -----------------------------------------------------
    receipt_poll_ms: int = Field(
        500, ge=10, description="How often the retry worker's receipt sender looks for due delivery receipts, "
        "milliseconds (a full page goes again at once). Receipts of expiry follow the reconciler's expiry sweep "
        "(RECONCILE_INTERVAL_S). Default 500.",
    )
    receipt_batch: int = Field(
        100, ge=1, le=1000, description="Most receipt events in one POST to one status_url, count. Default 100.",
    )

    # --- processes --------------------------------------------------------------------------
    gateway_processes: int = Field(
        1, ge=1, le=64, description="Processes one `notiflow gateway` runs, each a node of its own, sharing "
        "the port (SO_REUSEPORT). Default 1 (`notiflow dev` picks its own default, see the README).",
    )
    stream_worker_processes: int = Field(
        1, ge=1, le=64, description="Processes one `notiflow stream-worker` runs, each a consumer of its own. "
        "Default 1.",
    )

    # --- gateway sockets --------------------------------------------------------------------
    sse_keepalive_s: float = Field(
        15, gt=0, description="Seconds of silence after which an SSE stream (GET /sse) gets a keep-alive "
        "comment, so proxies keep it open; also how often a stream opened with an API key checks that the key "
        "is still valid. Default 15.",
    )
    ws_queue_max: int = Field(
        1000, ge=1, description="Frames queued per socket before it is closed as too slow. Default 1000."
    )
    http_keep_alive_s: int = Field(
        75, ge=1, description="How long an idle HTTP keep-alive connection stays open, seconds: longer than "
        "HTTP clients keep one in their pools (httpx 5 s, Node 4 s), so that no request is sent on a connection "
        "the gateway is closing. Default 75.",
    )
    ws_ping_interval_s: float = Field(20.0, gt=0, description="WebSocket ping frame period, s. Default 20.")
    ws_ping_timeout_s: float = Field(20.0, gt=0, description="Pong wait before a peer is dead, s. Default 20.")
    ws_max_frame_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest incoming WebSocket message, bytes; a larger one closes the socket "
        "with 1009 before it is read. Default 64 KiB.",
    )
    ws_max_ack_ids: int = Field(1000, ge=1, description="Ids one ack frame may name. Default 1000.")
    ws_max_acks_in_flight: int = Field(
        10_000, ge=1, description="Notification ids of one socket's acks not yet committed; an ack over it closes "
        "the socket with 1008. Default 10000.",
    )
    ws_ack_gather_ms: int = Field(
        20, ge=0, le=1000, description="How long (ms) socket acks of all sockets wait to be written together, counted "
        "from the oldest: at moderate rates each statement would otherwise carry one or two acks, and one "
        "statement costs PostgreSQL about 0.5 ms of CPU whatever it carries. An ack frame with a ref hears "
        "'acked' up to this much later. 0 writes at once. Default 20.",
    )
    ws_max_sockets_per_user: int = Field(
        10, ge=1, description="Open sockets of one user across the cluster; one more is closed with 4429. Default 10.",
    )
    ws_max_sockets: int = Field(
        20_000, ge=1, description="Open sockets per gateway process; one more is closed with 1013. Default 20000.",
    )
    ws_permessage_deflate: bool = Field(
        False, description="Offer permessage-deflate compression on sockets. Default false.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Host header names (no port) that HTTP requests and WebSocket handshakes may carry, comma-"
        "separated; `*` accepts any. NOTIFLOW_HOST is added when it is one address (not 0.0.0.0 or ::). Another "
        "Host gets 400 (`invalid_host`), a socket handshake 403: it defeats DNS rebinding. /healthz, /readyz and "
        "/metrics accept any Host (probes and scrapers use addresses). Default localhost,127.0.0.1,::1.",
    )
    http_max_concurrency: int = Field(
        1000, ge=1, description="HTTP connections and requests in flight one gateway process serves besides its "
        "sockets (uvicorn's limit_concurrency is this plus WS_MAX_SOCKETS); over it, requests get 503. "
        "Default 1000.",
    )
    api_docs: bool = Field(
        False, description="Serve the Swagger UI page at /docs. The page loads its script and style from the "
        "jsDelivr CDN (the browser does, the gateway needs no internet), so it is off by default: third-party "
        "script on the origin that holds the dashboard's admin key. /openapi.json is always served. Default false.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) whose WebSocket handshakes are accepted, comma-"
        "separated; `*` accepts any. Handshakes without an Origin header (non-browser clients) are always "
        "accepted. Default empty.",
    )

    # --- operators: metrics, the dashboard, retention -----------------------------------------
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

    # --- process lifecycle ------------------------------------------------------------------
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

    @field_validator("webhook_allowed_hosts", "api_keys", "allowed_origins", "allowed_hosts", mode="before")
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

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            for part in value.get_secret_value().split(","):
                _check_whsec(part.strip())
        return value

    @model_validator(mode="after")
    def _webhooks_need_a_secret(self) -> Self:
        if self.webhook_allowed_hosts and not self.webhook_secrets:
            raise ValueError(
                "NOTIFLOW_WEBHOOK_ALLOWED_HOSTS is set but NOTIFLOW_WEBHOOK_SECRET is not: webhooks would go "
                "out unsigned (generate one: python -c \"import base64,secrets; "
                "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\")"
            )
        return self

    @property
    def webhook_secrets(self) -> list[str]:
        """The signing secrets, in their ``whsec_`` form; empty when none is set."""
        if self.webhook_secret is None:
            return []
        return [p.strip() for p in self.webhook_secret.get_secret_value().split(",") if p.strip()]

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
