"""A notification's frame to its recipients (SPEC §3), encoded once per notification, and its accept time
read back from a frame. No I/O here.

The frame is ``{"type": "notification", "id", "seq", "event", ["collapse_key",] "payload", "created_at"}``;
only ``seq`` differs between recipients, so a ``FrameTemplate`` holds the rest once, and the payload is spliced
in as stored. The other frames of the socket protocol, and its close codes, are in gateway/protocol.py.

A node's batch of frames (what the stream worker publishes to a gateway node, streams/pubsub.py) is one line per
frame. A fan-out sends each notification's frame once: a line ``\x02 head \t tail`` sets the current template (a
frame without its seq), then each recipient is a line ``user_id \t seq``. A line ``user_id \t {...}`` carries a
whole frame. User ids cannot contain control characters, and frames are compact JSON, so no separator occurs
inside a field.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, TypeVar

import orjson


@dataclass(slots=True, frozen=True)
class FrameTemplate:
    """A notification's frame with its ``seq`` left out: encoded once per notification, however many
    recipients it has (only ``seq`` differs between them). Neither part contains a tab or a newline."""

    head: str  # '{"type":"notification","id":"...","seq":'
    tail: str  # ',"event":...,"payload":...,"created_at":...}'

    def frame(self, seq: int) -> str:
        return f"{self.head}{seq}{self.tail}"


def frame_template(
    nid: uuid.UUID, event: str, payload_json: str, created_at: datetime, collapse_key: str | None = None
) -> FrameTemplate:
    """The template of ``{"type": "notification", "id", "seq", "event", ["collapse_key",] "payload",
    "created_at"}`` (``collapse_key`` only when the notification has one); the payload is spliced in as
    stored, never decoded and re-encoded on the hot path. ``created_at`` stays last (frame_created_at)."""
    head = f'{{"type":"notification","id":"{nid}","seq":'
    event_json = orjson.dumps(event).decode()
    key = "" if collapse_key is None else f',"collapse_key":{orjson.dumps(collapse_key).decode()}'
    created = orjson.dumps(created_at).decode()
    return FrameTemplate(
        head, f',"event":{event_json}{key},"payload":{compact_payload(payload_json)},"created_at":{created}}}'
    )


def notification_frame(
    nid: uuid.UUID, seq: int, event: str, payload_json: str, created_at: datetime, collapse_key: str | None = None
) -> str:
    """One recipient's frame (see frame_template)."""
    return frame_template(nid, event, payload_json, created_at, collapse_key).frame(seq)


_CREATED = '"created_at":"'
#: Parsed created_at texts: a fan-out sends one notification's timestamp to every recipient, so it is parsed
#: once, not per frame. Bounded (cleared when full).
_CREATED_PARSED: dict[str, float] = {}
_CREATED_PARSED_MAX = 4096


def frame_created_at(frame: str) -> float | None:
    """The accept time (epoch seconds) of a notification frame built by ``notification_frame``, found
    without decoding the payload: created_at is the frame's last field. None for any other frame."""
    if not frame.startswith('{"type":"notification"'):
        return None
    at = frame.rfind(_CREATED)
    if at < 0:
        return None
    start = at + len(_CREATED)
    text = frame[start : frame.find('"', start)]
    parsed = _CREATED_PARSED.get(text)
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
        if len(_CREATED_PARSED) >= _CREATED_PARSED_MAX:
            _CREATED_PARSED.clear()
        _CREATED_PARSED[text] = parsed
    return parsed


def compact_payload(payload_json: str) -> str:
    """``payload_json`` as it is, or re-encoded on one line when it has a newline."""
    # jsonb text may contain newlines inside nothing but whitespace; frames must be single-line.
    return payload_json if "\n" not in payload_json else orjson.dumps(orjson.loads(payload_json)).decode()


_TEMPLATE = "\x02"

T = TypeVar("T")

#: One node's share of a batch: per notification's template, its recipients there and their seqs.
NodeBatch = dict[FrameTemplate, list[tuple[str, int]]]


def encode_batch(batch: NodeBatch) -> str:
    """Each template once, then its recipients as (user, seq)."""
    lines: list[str] = []
    for template, recipients in batch.items():
        lines.append(f"{_TEMPLATE}{template.head}\t{template.tail}")
        lines.extend(f"{user}\t{seq}" for user, seq in recipients)
    return "\n".join(lines)


#: Where a notification frame's id sits (frame_template's head): read without decoding the frame.
_NOTIFICATION_HEAD = '{"type":"notification","id":"'
_ID_AT = len(_NOTIFICATION_HEAD)
_ID_END = _ID_AT + 36  # a UUID's canonical text


def frame_id(frame: str) -> str | None:
    """The notification id of a frame built by ``notification_frame`` (or a template's head), as its text;
    None for any other frame."""
    return frame[_ID_AT:_ID_END] if frame.startswith(_NOTIFICATION_HEAD) else None


class Handed(NamedTuple):
    """What a node did with a batch's notification frames, as (user, notification id)."""

    pushed: list[tuple[str, str]]  # to a socket of the user
    missed: list[tuple[str, str]]  # the node no longer held the user


def route_frames(
    message: str, targets: Mapping[str, T], missed: list[tuple[str, str]] | None = None,
) -> Iterator[tuple[T, str, tuple[str, str] | None]]:
    """(target, frame, (user, notification id)) of every line whose user ``targets`` holds (what it maps the
    user to), in order, with one lookup per line; the frame built only for a user it holds; the key is None
    for a frame that is no notification. ``missed`` gets the (user, notification id) of the notification
    frames of the users ``targets`` does not hold. A generator: a list of every frame of a fan-out message
    held its tuples alive, and their allocations ran the cyclic GC over them."""
    head = tail = ""
    nid: str | None = None
    get = targets.get
    for line in message.split("\n"):
        if line.startswith(_TEMPLATE):
            head, _, tail = line[1:].partition("\t")
            nid = frame_id(head)
            continue
        user, sep, rest = line.partition("\t")
        if not sep:
            continue
        whole = rest.startswith("{")
        target = get(user)
        if target is None:
            line_id = frame_id(rest) if whole else nid
            if missed is not None and line_id is not None:
                missed.append((user, line_id))
            continue
        if whole:
            line_id = frame_id(rest)
            yield target, rest, (None if line_id is None else (user, line_id))
        else:
            yield target, f"{head}{rest}{tail}", (None if nid is None else (user, nid))
