"""Collapse keys in what the platform writes (docs/contract.md "Collapse keys"): the frame, the webhook body, and the
stream entries of keyed notifications (never carried: the worker must read the row, which may say replaced)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from notiflow.frames import frame_created_at, notification_frame
from notiflow.models import DeliveryWork, NewNotification
from notiflow.service.enqueue import stream_entries

_AT = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def test_the_frame_carries_the_key_before_the_payload_and_created_at_stays_last() -> None:
    nid = uuid.uuid4()
    frame = notification_frame(nid, 7, "e", '{"a": 1}', _AT, 'k "quoted"\u00e9')
    parsed = orjson.loads(frame)
    assert list(parsed) == ["type", "id", "seq", "event", "collapse_key", "payload", "created_at"]
    assert parsed["collapse_key"] == 'k "quoted"\u00e9' and parsed["seq"] == 7
    assert frame_created_at(frame) == _AT.timestamp()
    assert "collapse_key" not in orjson.loads(notification_frame(nid, 7, "e", "{}", _AT))


def test_the_webhook_body_carries_the_key() -> None:
    w = DeliveryWork(uuid.uuid4(), "u", 3, "pending", "pending", 0, 0, "e", "{}", _AT, False, None, collapse_key="k")
    assert orjson.loads(w.webhook_body())["collapse_key"] == "k"
    w.collapse_key = None
    assert "collapse_key" not in orjson.loads(w.webhook_body())


def test_keyed_notifications_are_not_carried_in_the_stream() -> None:
    plain = NewNotification(uuid.uuid4(), ["a", "b"], "e", "{}", None, None, created_at=_AT, seqs=[1, 1])
    keyed = NewNotification(
        uuid.uuid4(), ["a"], "e", "{}", None, None, collapse_key="k", created_at=_AT, seqs=[2]
    )
    plain_entry, keyed_entry = stream_entries([plain, keyed], 100)
    assert plain_entry.carried is not None and keyed_entry.carried is None
