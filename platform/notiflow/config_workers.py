"""Settings of the workers: retries and the DLQ, webhooks, the stream worker, the retry worker and its
reconciler, delivery receipts.

Each class is one group of ``Settings`` fields (config.py composes them); none is used on its own.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

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


class RetryFields(BaseModel):
    """Retries and the DLQ."""

    max_retries: int = Field(5, ge=0, description="Retries after the first attempt before the DLQ. Default 5.")
    retry_base_ms: int = Field(1000, ge=1, description="Full-jitter backoff base, milliseconds. Default 1000.")
    retry_cap_ms: int = Field(300_000, ge=1, description="Backoff cap, milliseconds. Default 300000.")
    poison_max_deliveries: int = Field(
        5, ge=1, description="Times a stream entry may be claimed before it is parked as poison. Default 5."
    )


class WebhookFields(BaseModel):
    """Webhooks: where they may go, how they are signed, how many run at once."""

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

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            for part in value.get_secret_value().split(","):
                _check_whsec(part.strip())
        return value

    @property
    def webhook_secrets(self) -> list[str]:
        """The signing secrets, in their ``whsec_`` form; empty when none is set."""
        if self.webhook_secret is None:
            return []
        return [p.strip() for p in self.webhook_secret.get_secret_value().split(",") if p.strip()]


class StreamWorkerFields(BaseModel):
    """The stream worker."""

    worker_batch: int = Field(200, ge=1, description="Stream entries read per XREADGROUP. Default 200.")
    worker_block_ms: int = Field(1000, ge=1, description="XREADGROUP block time, milliseconds. Default 1000.")
    reclaim_idle_ms: int = Field(
        30_000, ge=100, description="Idle time after which another consumer's entry is reclaimed, ms. Default 30000."
    )
    reclaim_interval_s: float = Field(5.0, gt=0, description="How often idle entries are reclaimed, s. Default 5.")
    dispatch_record_delay_ms: int = Field(
        2000, ge=0, description="How long socket hand-offs wait before they are written, coalesced, ms: the "
        "gateways' `dispatched` (frames pushed to a socket; acknowledged meanwhile, they need no write) and the "
        "stream workers' `offline`. Give gateways and workers the same value. Default 2000.",
    )


class RetryWorkerFields(BaseModel):
    """The retry worker and the reconciler."""

    retry_poll_ms: int = Field(200, ge=10, description="Retry ZSET poll period, milliseconds. Default 200.")
    retry_batch: int = Field(500, ge=1, description="Due retries moved per Lua call. Default 500.")
    reconcile_interval_s: float = Field(2.0, gt=0, description="Reconciler period, seconds. Default 2.")
    stuck_after_s: float = Field(
        120.0, gt=0, description="Age after which pending/retrying work is put back on Redis, s. Default 120."
    )
    outbox_grace_s: float = Field(
        5.0, gt=0, description="Age after which committed work not yet in the stream is re-enqueued, s. Default 5."
    )


class ReceiptFields(BaseModel):
    """Delivery receipts (status_url)."""

    receipt_poll_ms: int = Field(
        500, ge=10, description="How often the retry worker's receipt sender looks for due delivery receipts, "
        "milliseconds (a full page goes again at once). Receipts of expiry follow the reconciler's expiry sweep "
        "(RECONCILE_INTERVAL_S). Default 500.",
    )
    receipt_batch: int = Field(
        100, ge=1, le=1000, description="Most receipt events in one POST to one status_url, count. Default 100.",
    )
