"""The WebSocket protocol: frames and close codes, documented in this one place.

Server to client: ``{"type": "notification", "id", "seq", "event", "payload", "created_at"}`` (with
``"collapse_key"`` after ``event`` when the notification has one: the newest per key replaces the older ones),
``{"type": "pong"}``, ``{"type": "acked", "ref"}`` once the commit of an ack frame that carried ``ref`` is
durable, and ``{"type": "error", "code", "message"}`` (the socket stays open): ``bad_frame`` for a frame that
does not follow this protocol (a binary frame, bad JSON, an ack naming more than ``WS_MAX_ACK_IDS`` ids or with
a bad ``ref``), ``ack_failed`` when the commit of an ack frame failed (with the frame's ``ref``, or with its
``ids`` when it carried no ``ref``).
Client to server: text frames only, ``{"type": "ack", "ids": [...]}`` or ``{"type": "ack", "ids": [...],
"ref": n}``, ``{"type": "ping"}``. ``ref`` is the client's own number for the frame: an integer from 0 to
2**53 - 1 (exact in every JSON reader); any other value is a ``bad_frame`` and the frame is not applied.

What a socket ack promises: an ack frame with ``ref`` is answered by exactly one of ``acked`` or
``ack_failed`` carrying that ``ref`` (ids are not echoed), unless the socket closes first. After ``acked``
those ids are acknowledged exactly as by ``POST /notifications/offline/{user_id}/ack``: they are
``delivered``, never listed in the offline queue and never pushed again as open. An ack frame without ``ref``
is applied all the same and never confirmed (a failed commit is reported with its ids). An ack without
``acked`` (no ``ref``, ``ack_failed``, or the
socket closed or the node died first) may or may not have been applied: those notifications may come back,
and the client sends the ack again (acks are idempotent; unknown ids and other users' ids change nothing and
are confirmed all the same).

The handshake is refused (HTTP 403, no socket) when it carries an ``Origin`` header that is not in
``ALLOWED_ORIGINS``: browsers always send one, so only pages of allowed origins can open sockets. A
handshake without ``Origin`` is a non-browser client (a backend, a mobile app, websocat) and is allowed;
it authenticates like any other.

Whatever the close code, nothing a client missed is lost: every notification it did not acknowledge
stays in ``GET /notifications/offline/{user_id}``. A reconnecting client should read that queue.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class CloseCode(IntEnum):
    """Why the server closed a socket. ``RECONNECT`` below says what a client should do."""

    NORMAL = 1000  # the client asked to close
    POLICY_VIOLATION = 1008  # too many acked ids awaiting commit (ack flood): reconnect with backoff, ack less
    MESSAGE_TOO_BIG = 1009  # a frame over WS_MAX_FRAME_BYTES (sent by the WebSocket layer unread): fix the client
    INTERNAL_ERROR = 1011  # the node could not register the socket (Redis down): reconnect with backoff
    SERVICE_RESTART = 1012  # the gateway node is shutting down or restarting (uvicorn sends it): reconnect
    TRY_AGAIN_LATER = 1013  # this node holds WS_MAX_SOCKETS sockets: reconnect with backoff (another node)
    SLOW_CONSUMER = 4008  # the client read too slowly and its send queue overflowed: reconnect
    BAD_USER_ID = 4400  # the user id in the path is invalid: do not reconnect
    UNAUTHORIZED = 4401  # missing, invalid or expired token (also at the token's exp): reconnect with a fresh one
    FORBIDDEN = 4403  # valid token of another user, or an API key (sockets are end users' own): do not reconnect
    TOO_MANY_SOCKETS = 4429  # the user holds WS_MAX_SOCKETS_PER_USER sockets: backoff, a place frees on a close


RECONNECT: dict[CloseCode, bool] = {
    CloseCode.NORMAL: False,
    CloseCode.POLICY_VIOLATION: True,
    CloseCode.MESSAGE_TOO_BIG: False,
    CloseCode.INTERNAL_ERROR: True,
    CloseCode.SERVICE_RESTART: True,
    CloseCode.TRY_AGAIN_LATER: True,
    CloseCode.SLOW_CONSUMER: True,
    CloseCode.BAD_USER_ID: False,
    CloseCode.UNAUTHORIZED: True,  # only with a new token; with the same one it is refused again
    CloseCode.FORBIDDEN: False,
    CloseCode.TOO_MANY_SOCKETS: True,
}

PONG = '{"type":"pong"}'
#: Ids one ack frame may name by default (the setting WS_MAX_ACK_IDS); clients send at most this many.
MAX_ACK_IDS = 1000
#: An ack frame's ``ref`` is below this: integers up to 2**53 - 1 are exact in every JSON reader.
MAX_REF = 2**53


class ClientFrame(NamedTuple):
    """A parsed client frame: ``kind`` is "ack" or "ping"; ``ids`` for acks, ``ref`` when the ack asks for
    an answer (None: it is applied unanswered). A named tuple: made for about every delivery of a fan-out (its
    clients' ack frames), in a third of a frozen dataclass's time."""

    kind: str
    ids: tuple[str, ...] = ()
    ref: int | None = None


class FrameError(ValueError):
    """A client frame that does not follow the protocol; answered with an error frame."""


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """Whether a handshake's ``Origin`` may open a socket: no header (not a browser), ``*``, or listed."""
    if origin is None:
        return True
    if "*" in allowed:
        return True
    wanted = origin.strip().rstrip("/").lower()
    return any(wanted == a.strip().rstrip("/").lower() for a in allowed)
