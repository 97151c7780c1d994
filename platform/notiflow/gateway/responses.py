"""What the HTTP API answers, as OpenAPI documents: the response body of each route and every status it
may return (the words, examples and request bodies are in openapi.py).

The routes build their answers directly (orjson, payloads spliced in as stored), so these models are the
contract, not the serialiser: schemathesis checks in `make test` that real answers match them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

Docs = dict[int | str, dict[str, Any]]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    """Every error: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody


class AcceptedOut(BaseModel):
    id: uuid.UUID
    status: Literal["accepted"]
    #: None for a topic notification: its subscribers are counted as it is expanded, after the 202.
    recipients: int | None
    topic: str | None = None


class OfflineItem(BaseModel):
    id: uuid.UUID
    seq: int
    event: str
    collapse_key: str | None = None  # present only when the notification has one
    payload: dict[str, Any]
    created_at: datetime


class OfflinePage(BaseModel):
    user_id: str
    notifications: list[OfflineItem]
    next_after_seq: int | None


class AckOut(BaseModel):
    acknowledged: int


class AttemptOut(BaseModel):
    channel: str
    attempt: int
    outcome: str
    error: str | None
    node_id: str
    started_at: datetime
    finished_at: datetime


class DeliveryOut(BaseModel):
    user_id: str
    seq: int
    status: str
    webhook_status: str | None
    delivered_at: datetime | None
    attempts: list[AttemptOut]


class NotificationOut(BaseModel):
    id: uuid.UUID
    event: str
    payload: dict[str, Any]
    created_at: datetime
    recipients: int
    status_counts: dict[str, int]
    deliveries: list[DeliveryOut]


class DlqEntry(BaseModel):
    id: int
    notification_id: uuid.UUID
    user_id: str
    channel: str
    reason: str
    last_error: str | None
    attempts: int
    failed_at: datetime


class DlqPage(BaseModel):
    entries: list[DlqEntry]
    next_after: int | None


class ReplayOut(BaseModel):
    id: int
    replayed: bool


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


_WHY = {
    400: "malformed JSON, or a bad Idempotency-Key header",
    401: "credentials missing",
    403: "credentials that do not allow this",
    404: "not found",
    409: "a live API key already has that name",
    413: "body or payload too large, or more deliveries (recipients) than INGEST_BURST in one request",
    415: "Content-Type is not application/json",
    422: "invalid input (unknown fields, wrong types, bad ids, values out of range)",
    429: "over the backlog bound or this client's rate limit; see Retry-After",
    431: "request headers too large",
    503: "a store is unavailable; see Retry-After",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}


def errors(*statuses: int) -> Docs:
    """The error answers a route may give, each with the one error body; 401/403/431 apply everywhere."""
    out: Docs = {}
    for status in sorted({*statuses, 401, 403, 431}):
        doc: dict[str, Any] = {"model": ErrorOut, "description": _WHY[status]}
        if status in (429, 503):
            doc["headers"] = _RETRY_AFTER
        out[status] = doc
    return out


def ok(status: int, model: type[BaseModel], description: str) -> Docs:
    return {status: {"model": model, "description": description}}


READS = errors(422, 503)
INGEST = ok(202, AcceptedOut, "accepted and committed") | errors(400, 413, 415, 422, 429, 503)
ACK = ok(200, AckOut, "deliveries acknowledged") | errors(400, 413, 415, 422, 503)
OFFLINE = ok(200, OfflinePage, "the user's open notifications, oldest first") | READS
NOTIFICATION = ok(200, NotificationOut, "the notification and its deliveries") | errors(404, 422, 503)
DLQ_LIST = ok(200, DlqPage, "dead-lettered deliveries") | READS
DLQ_REPLAY = ok(202, ReplayOut, "put back to work (replayed false: it was already)") | errors(404, 422, 503)
_DELETED: Docs = {204: {"description": "deleted"}}
DLQ_DELETE = _DELETED | errors(404, 422, 503)
HEALTH = ok(200, HealthOut, "the process is alive")
_NOT_READY: Docs = {503: {"model": ReadyOut, "description": "a store does not"}}
READY = ok(200, ReadyOut, "Redis and PostgreSQL answer") | _NOT_READY
METRICS: Docs = {200: {"description": "Prometheus metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}
