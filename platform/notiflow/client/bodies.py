"""What the producer sends and gets: request bodies (``notification()``, ``topic_notification()``, each with
exactly one recipient form) and the answers' shapes (``Accepted``, ``SubscribersPage``)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, TypedDict


class Accepted(TypedDict):
    """The 202 answer for one notification."""

    id: str
    status: str
    recipients: int | None  # None: a topic notification, its subscribers counted once it is expanded
    topic: NotRequired[str]  # a topic notification's topic


class SubscribersPage(TypedDict):
    """One page of ``GET /topics/{topic}/subscribers``: pass ``next_after`` as ``after`` for the next."""

    topic: str
    subscribers: list[str]
    next_after: str | None


def accepted_answer(answer: Mapping[str, Any]) -> Accepted:
    accepted = Accepted(id=answer["id"], status=answer["status"], recipients=answer["recipients"])
    if "topic" in answer:
        accepted["topic"] = answer["topic"]
    return accepted


def new_key() -> str:
    """A fresh idempotency key for a notification the caller gave none."""
    return f"auto-{uuid.uuid4()}"


def _body(
    recipients: dict[str, Any], event: str, payload: Mapping[str, Any] | None, ttl_seconds: int | None,
    webhook_url: str | None, status_url: str | None, collapse_key: str | None, idempotency_key: str | None,
) -> dict[str, Any]:
    body = {**recipients, "event": event, "payload": dict(payload or {})}
    optional = {"ttl_seconds": ttl_seconds, "webhook_url": webhook_url, "status_url": status_url,
                "collapse_key": collapse_key, "idempotency_key": idempotency_key}
    body.update((name, value) for name, value in optional.items() if value is not None)
    return body


def notification(
    user_ids: str | Sequence[str], event: str, payload: Mapping[str, Any] | None = None, *,
    ttl_seconds: int | None = None, webhook_url: str | None = None, status_url: str | None = None,
    collapse_key: str | None = None, idempotency_key: str | None = None,
) -> dict[str, Any]:
    """One notification to users as ``send_many`` takes it (the body of POST /notifications, plus its key)."""
    to = {"user_id": user_ids} if isinstance(user_ids, str) else {"user_ids": list(user_ids)}
    return _body(to, event, payload, ttl_seconds, webhook_url, status_url, collapse_key, idempotency_key)


def topic_notification(
    topic: str, event: str, payload: Mapping[str, Any] | None = None, *,
    ttl_seconds: int | None = None, webhook_url: str | None = None, status_url: str | None = None,
    collapse_key: str | None = None, idempotency_key: str | None = None,
) -> dict[str, Any]:
    """One notification to a topic's subscribers, as ``send_many`` takes it."""
    to = {"topic": topic}
    return _body(to, event, payload, ttl_seconds, webhook_url, status_url, collapse_key, idempotency_key)
