"""Stream entries and retry members: what the worker parses must be exactly what was written, and
anything else must be refused (a refused entry is parked as poison, never processed)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notiflow.models import Channel, DeliveryWork, Outcome, StreamEntry, user_id_problem
from notiflow.streams.work import retry_member

valid_user_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1, max_size=40
).filter(lambda u: user_id_problem(u) is None)


@given(
    nid=st.uuids(),
    users=st.lists(valid_user_ids, min_size=1, max_size=20),
    channel=st.sampled_from(list(Channel)),
)
def test_fields_round_trip_through_parse(nid: uuid.UUID, users: list[str], channel: Channel) -> None:
    entry = StreamEntry(nid, tuple(users), channel)
    assert StreamEntry.parse(entry.fields()) == entry
    # As Redis hands them back without decoding: bytes keys and values.
    raw = {k.encode(): v.encode() for k, v in entry.fields().items()}
    assert StreamEntry.parse(raw) == entry


def test_channel_defaults_to_socket() -> None:
    nid = uuid.uuid4()
    assert StreamEntry.parse({"n": str(nid), "u": "alice"}) == StreamEntry(nid, ("alice",), Channel.SOCKET)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"garbage": "1"},
        {"n": str(uuid.uuid4())},  # no recipients
        {"n": str(uuid.uuid4()), "u": ""},
        {"u": "alice"},  # no notification
        {"n": "not-a-uuid", "u": "alice"},
        {"n": str(uuid.uuid4()), "u": "a/b"},
        {"n": str(uuid.uuid4()), "u": "al\x00ice"},
        {"n": str(uuid.uuid4()), "u": "alice\x1f"},  # an empty recipient after the separator
        {"n": str(uuid.uuid4()), "u": "x" * 256},
        {"n": str(uuid.uuid4()), "u": "alice", "c": "carrier-pigeon"},
        {b"n": b"\xff\xfe", b"u": b"alice"},  # not UTF-8
    ],
)
def test_malformed_fields_are_refused_with_key_or_value_error(fields: dict[Any, Any]) -> None:
    with pytest.raises((KeyError, ValueError)):
        StreamEntry.parse(fields)


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=40), max_size=5))
def test_parse_of_arbitrary_fields_only_ever_raises_key_or_value_error(fields: dict[str, str]) -> None:
    # The worker parks exactly these two as malformed; anything else would escape as a crash.
    try:
        entry = StreamEntry.parse(fields)
    except (KeyError, ValueError):
        return
    assert entry.user_ids and all(user_id_problem(u) is None for u in entry.user_ids)


@given(nid=st.uuids(), user=valid_user_ids, channel=st.sampled_from(list(Channel)))
def test_retry_member_is_what_the_move_script_turns_back_into_an_entry(
    nid: uuid.UUID, user: str, channel: Channel
) -> None:
    member = retry_member(nid, user, channel)
    fields = orjson.loads(member)  # the Lua script decodes the member with cjson and XADDs n, u, c
    assert StreamEntry.parse(fields) == StreamEntry(nid, (user,), channel)
    assert retry_member(nid, user, channel) == member  # one member per delivery and channel: ZADD moves it
    other = Channel.WEBHOOK if channel is Channel.SOCKET else Channel.SOCKET
    assert retry_member(nid, user, other) != member


def test_webhook_body_is_the_notification_for_one_recipient() -> None:
    nid = uuid.uuid4()
    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    work = DeliveryWork(
        notification_id=nid, user_id="alice", seq=7, status="pending", webhook_status="pending", attempts=0,
        webhook_attempts=0, event="order.shipped", payload_json='{"order": 42, "note": "a\\nb"}',
        created_at=created, expired=False, webhook_url="http://hooks.example/n",
    )
    body = orjson.loads(work.webhook_body())
    assert body == {"id": str(nid), "user_id": "alice", "seq": 7, "event": "order.shipped",
                    "payload": {"order": 42, "note": "a\nb"}, "created_at": "2024-05-01T12:00:00+00:00"}


def test_outcome_retry_time_in_milliseconds() -> None:
    at = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    now = datetime.now(UTC)
    o = Outcome(uuid.uuid4(), "alice", "webhook", 1, "failed", "retrying", "n", now, now, next_attempt_at=at)
    assert o.retry_at_ms == int(at.timestamp() * 1000)
    o.next_attempt_at = None
    assert o.retry_at_ms is None
