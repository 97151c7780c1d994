"""Request bodies of the HTTP API, validated strictly: unknown fields and wrong types are rejected."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from notiflow.errors import ApiError
from notiflow.models import COLLAPSE_KEY_MAX, EVENT_RE, user_id_problem

MAX_RECIPIENTS = 10_000
MAX_BATCH = 1_000  # notifications per POST /notifications/batch
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_PAYLOAD_DEPTH = 64  # nesting of objects and arrays; the JSON encoder stops at 254
MAX_TTL_S = 2**31 - 1  # what the store takes; the service refuses more than the retention period (422 ttl_too_long)
#: The largest sequence number or DLQ id (PostgreSQL bigint): larger ones name nothing, and are 422.
MAX_BIGINT = 2**63 - 1


def payload_problem(payload: Any) -> str | None:
    """Why a payload cannot be stored (PostgreSQL's jsonb refuses the NUL character; very deep nesting
    cannot be encoded), or None. Iterative: a hostile depth cannot exhaust the stack."""
    # Fast path, C speed: the JSON text escapes every NUL as \u0000, and nesting is never deeper than the
    # number of opening brackets (those inside strings only overcount). Walked in Python otherwise.
    try:
        text = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        text = None
    if text is not None and b"\\u0000" not in text and text.count(b"{") + text.count(b"[") <= MAX_PAYLOAD_DEPTH:
        return None
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return "must not contain the NUL character (\\u0000)"
        elif isinstance(value, dict | list):
            if depth > MAX_PAYLOAD_DEPTH:
                return f"must not nest objects and arrays more than {MAX_PAYLOAD_DEPTH} deep"
            if isinstance(value, dict):
                stack.extend((k, depth) for k in value)
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
    return None


#: Optional fields added after idempotency hashes were first stored: left out of the hash when not given.
_LATER_FIELDS = ("status_url", "collapse_key")


class NotificationIn(BaseModel):
    """POST /notifications."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str | None = None
    user_ids: list[str] | None = Field(None, min_length=1, max_length=MAX_RECIPIENTS)
    #: The topic's subscribers at acceptance (docs/contract.md "Topics"); names follow the user-id rule.
    topic: str | None = None
    event: str = Field(pattern=EVENT_RE.pattern)
    payload: dict[str, Any] = Field(default_factory=dict)
    ttl_seconds: int | None = Field(None, ge=1, le=MAX_TTL_S)
    webhook_url: str | None = Field(None, min_length=1, max_length=2048)
    status_url: str | None = Field(None, min_length=1, max_length=2048)
    collapse_key: str | None = Field(None, min_length=1, max_length=COLLAPSE_KEY_MAX)

    @field_validator("collapse_key")
    @classmethod
    def _printable(cls, key: str | None) -> str | None:
        # Frames travel between nodes in tab- and newline-separated batches (streams/pubsub.py), and a key is
        # shown to people: printable characters only (no control, format or separator characters but space).
        if key is not None and not key.isprintable():
            raise ValueError("collapse_key must be printable characters (no control or invisible characters)")
        return key

    def hashed(self) -> dict[str, Any]:
        """What the idempotency check hashes: the body, without the later optional fields it did not give
        (a body hashes as it did before those fields existed, so a retry across an upgrade is no conflict)."""
        unset = {name for name in _LATER_FIELDS if getattr(self, name) is None}
        return self.model_dump(exclude=unset or None)

    @field_validator("payload")
    @classmethod
    def _storable(cls, payload: dict[str, Any]) -> dict[str, Any]:
        if problem := payload_problem(payload):
            raise ValueError(f"payload {problem}")
        return payload

    @model_validator(mode="after")
    def _recipients(self) -> NotificationIn:
        if sum(x is not None for x in (self.user_id, self.user_ids, self.topic)) != 1:
            raise ValueError("give exactly one of user_id, user_ids and topic")
        if self.topic is not None and (problem := user_id_problem(self.topic)):
            raise ValueError(f"topic {self.topic[:64]!r} {problem}")
        for uid in self.recipients():
            if problem := user_id_problem(uid):
                raise ValueError(f"user id {uid[:64]!r} {problem}")
        if self.user_ids is not None and len(set(self.user_ids)) != len(self.user_ids):
            raise ValueError("user_ids must be distinct")
        return self

    def recipients(self) -> list[str]:
        return [self.user_id] if self.user_id is not None else list(self.user_ids or [])


class AckIn(BaseModel):
    """POST /notifications/offline/{user_id}/ack: exactly one of ``ids`` and ``up_to_seq``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ids: list[str] | None = Field(None, max_length=MAX_RECIPIENTS)
    up_to_seq: int | None = Field(None, ge=0, le=MAX_BIGINT)

    @model_validator(mode="after")
    def _one(self) -> AckIn:
        if (self.ids is None) == (self.up_to_seq is None):
            raise ValueError("give exactly one of ids and up_to_seq")
        return self

    def uuids(self) -> list[uuid.UUID] | None:
        if self.ids is None:
            return None
        return [parse_uuid(i, "ids") for i in self.ids]


def parse_uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise ApiError(422, "invalid_id", f"{field}: {str(value)[:64]!r} is not a UUID") from None
