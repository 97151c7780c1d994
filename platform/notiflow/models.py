"""Data of the delivery domain: states, rows and stream entries. No I/O here.

A notification's frame to its recipients is encoded in frames.py."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from notiflow.frames import FrameTemplate, compact_payload, frame_template

USER_ID_MAX = 255
EVENT_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
#: A collapse key's length, characters (docs/contract.md "Collapse keys").
COLLAPSE_KEY_MAX = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Joins user ids into one text (stream entries, SQL parameters): a control character, never in a user id.
USER_SEP = "\x1f"
#: Invisible characters that make two ids look alike or reorder how an id is shown: format characters
#: (bidi overrides and isolates U+202A-202E/2066-2069, zero-width U+200B-200D/2060/FEFF, soft hyphen),
#: surrogates, and the line and paragraph separators.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cs", "Zl", "Zp"})


def user_id_problem(user_id: object) -> str | None:
    """Why ``user_id`` is not a valid user id (SPEC §2), or None when it is."""
    if not isinstance(user_id, str):
        return "must be a string"
    if not 1 <= len(user_id) <= USER_ID_MAX:
        return f"must be 1-{USER_ID_MAX} characters"
    if "/" in user_id:
        return "must not contain '/'"
    if _CONTROL.search(user_id):
        return "must not contain control characters"
    if not user_id.isascii() and any(unicodedata.category(c) in _INVISIBLE_CATEGORIES for c in user_id):
        return "must not contain bidi-control, zero-width or other invisible format characters"
    return None


class DeliveryStatus(StrEnum):
    """Socket-channel state of one recipient's delivery (SPEC §4)."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    OFFLINE = "offline"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    DEAD = "dead"
    EXPIRED = "expired"
    #: A newer notification with the same collapse key for the same user took its place while it was
    #: unacknowledged (docs/contract.md "Collapse keys"). Terminal: never listed, pushed, retried or
    #: dead-lettered again.
    REPLACED = "replaced"


#: Socket-channel states in which a delivery is in the user's offline queue: not acknowledged, not expired.
#: ``dead`` is one of them (SPEC §4): a delivery whose retries ran out, say through a store outage, has a DLQ
#: row for operators and still waits for its user, who acknowledges it like any other.
OPEN_STATUSES: tuple[DeliveryStatus, ...] = (
    DeliveryStatus.PENDING, DeliveryStatus.DISPATCHED, DeliveryStatus.OFFLINE, DeliveryStatus.RETRYING,
    DeliveryStatus.DEAD,
)
#: States (of either channel) in which a delivery still expects a worker to process it.
WORK_STATUSES: tuple[str, ...] = (DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value)


def sql_list(values: tuple[str, ...]) -> str:
    """``('a', 'b')`` for an SQL IN list of fixed, known identifiers (never user input)."""
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


class ReceiptKind(StrEnum):
    """The terminal state a delivery receipt reports (migration 012 lists them in its CHECK constraint)."""

    DELIVERED = "delivered"
    DEAD = "dead"
    EXPIRED = "expired"
    #: Replaced by a newer notification with its collapse key (migration 011).
    REPLACED = "replaced"

    @property
    def event_type(self) -> str:
        """The event's ``type``: ``delivery.delivered``, ``delivery.dead``, ``delivery.expired``,
        ``delivery.replaced``."""
        return f"delivery.{self.value}"


class Channel(StrEnum):
    """What a stream entry asks the worker to do for its recipients."""

    SOCKET = "socket"
    WEBHOOK = "webhook"
    #: Expand a topic notification into its subscribers' deliveries (service/expansion.py); the entry names the
    #: topic where the others name users (topic names follow the user-id rule).
    TOPIC = "topic"


@dataclass(slots=True)
class NewNotification:
    """A validated ingest request, before it is stored."""

    id: uuid.UUID
    user_ids: list[str]
    event: str
    payload_json: str
    ttl_seconds: int | None
    webhook_url: str | None
    _: KW_ONLY  # what follows is named at every construction: fields added later cannot shift positions
    #: Where delivery receipts go (docs/contract.md, "Delivery receipts"); None: no receipts.
    status_url: str | None = None
    idempotency_key: str | None = None
    #: Whose key it is (the API key that sent it, see credentials.Principal); '' with auth off.
    idempotency_scope: str = ""
    request_hash: str | None = None
    #: Replaces this user's older unacknowledged notification with the same key (docs/contract.md).
    collapse_key: str | None = None
    #: A topic notification (user_ids empty): its recipients are the topic's subscribers at acceptance.
    topic: str | None = None
    # Set by the commit: the creation time stored, and each recipient's seq (in user_ids order).
    created_at: datetime | None = None
    seqs: list[int] | None = None


@dataclass(slots=True, frozen=True)
class Carried:
    """What a fresh socket entry carries so that the worker needs nothing from PostgreSQL to push it:
    the frame's parts and each recipient's seq (in the entry's user order)."""

    seqs: tuple[int, ...]
    event: str
    payload_json: str
    created_at: datetime
    expires_at_ms: int | None


@dataclass(slots=True, frozen=True)
class StreamEntry:
    """One unit of work on the stream: a notification for a chunk of its recipients."""

    notification_id: uuid.UUID
    user_ids: tuple[str, ...]
    channel: Channel = Channel.SOCKET
    carried: Carried | None = None

    def fields(self) -> dict[str, str]:
        out = {"n": str(self.notification_id), "u": USER_SEP.join(self.user_ids), "c": self.channel.value}
        if (c := self.carried) is not None:
            out.update({
                "s": ",".join(map(str, c.seqs)), "e": c.event, "p": c.payload_json,
                "t": c.created_at.isoformat(), "x": "" if c.expires_at_ms is None else str(c.expires_at_ms),
            })
        return out

    @classmethod
    def parse(cls, fields: dict[Any, Any]) -> StreamEntry:
        """Parse raw stream fields; raises ValueError (a poison entry) when they are malformed."""
        raw = {_text(k): _text(v) for k, v in fields.items()}
        users = tuple(raw["u"].split(USER_SEP)) if raw.get("u") else ()
        if not users or any(user_id_problem(u) for u in users):
            raise ValueError(f"bad recipients in stream entry: {raw.get('u')!r:.200}")
        carried = None
        if "s" in raw:
            seqs = tuple(int(x) for x in raw["s"].split(","))
            if len(seqs) != len(users) or not EVENT_RE.match(raw["e"]):
                raise ValueError("carried frame does not match the entry's recipients")
            created = datetime.fromisoformat(raw["t"])
            carried = Carried(seqs, raw["e"], raw["p"], created, int(raw["x"]) if raw["x"] else None)
        return cls(uuid.UUID(raw["n"]), users, Channel(raw.get("c", "socket")), carried)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


@dataclass(slots=True)
class DeliveryWork:
    """A delivery loaded for processing: its row joined with its notification."""

    notification_id: uuid.UUID
    user_id: str
    seq: int
    status: str
    webhook_status: str | None
    attempts: int
    webhook_attempts: int
    event: str
    payload_json: str
    created_at: datetime
    expired: bool
    webhook_url: str | None
    socket_not_due: bool = False
    webhook_not_due: bool = False
    collapse_key: str | None = None

    @property
    def key(self) -> tuple[uuid.UUID, str]:
        return (self.notification_id, self.user_id)

    def template(self) -> FrameTemplate:
        """The SPEC §3 server-to-client frame of this notification, without its seq."""
        return frame_template(self.notification_id, self.event, self.payload_json, self.created_at, self.collapse_key)

    def webhook_body(self) -> bytes:
        """The downstream's JSON body: the notification for this one recipient."""
        fields: dict[str, object] = {
            "id": str(self.notification_id), "user_id": self.user_id, "seq": self.seq, "event": self.event,
        }
        if self.collapse_key is not None:
            fields["collapse_key"] = self.collapse_key
        head = orjson.dumps(fields)[:-1].decode()
        created = orjson.dumps(self.created_at).decode()
        return f'{head},"payload":{compact_payload(self.payload_json)},"created_at":{created}}}'.encode()



@dataclass(slots=True)
class Outcome:
    """What one attempt on one channel decided for one delivery; recorded in one batch statement."""

    notification_id: uuid.UUID
    user_id: str
    channel: str  # "socket" | "webhook"
    attempt: int  # 1-based number of this attempt on this channel
    outcome: str  # attempt row: dispatched | offline | succeeded | failed | expired | poison
    status: str  # the channel's new state: dispatched | offline | retrying | dead | expired | succeeded
    node_id: str
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    next_attempt_at: datetime | None = None
    dlq_reason: str | None = None  # set when status is dead: a DLQ row is written

    @property
    def retry_at_ms(self) -> int | None:
        if self.next_attempt_at is None:
            return None
        return int(self.next_attempt_at.timestamp() * 1000)
