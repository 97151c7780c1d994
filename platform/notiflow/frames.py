"""A notification's frame to its recipients (SPEC §3), encoded once per notification, and its accept time
read back from a frame. No I/O here.

The frame is ``{"type": "notification", "id", "seq", "event", ["collapse_key",] "payload", "created_at"}``;
only ``seq`` differs between recipients, so a ``FrameTemplate`` holds the rest once, and the payload is spliced
in as stored. The other frames of the socket protocol, and its close codes, are in gateway/protocol.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

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
