"""Settings of the gateway: presence, ingestion, authentication (SPEC §7), sockets and HTTP.

Each class is one group of ``Settings`` fields (config.py composes them); none is used on its own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode


class PresenceFields(BaseModel):
    """Presence: which node holds a user's sockets."""

    presence_ttl_s: float = Field(
        15, gt=0, description="Seconds a dead node's users may still count as online. Default 15."
    )


class IngestFields(BaseModel):
    """Ingestion: backlog, batches, fan-out, request size."""

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


class AuthFields(BaseModel):
    """Authentication (SPEC §7), the ingest rate limit and idempotency keys."""

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


class SocketFields(BaseModel):
    """The gateway's sockets (WebSocket, SSE) and HTTP serving."""

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
