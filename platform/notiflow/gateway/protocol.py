"""The WebSocket protocol: frames and close codes, documented in this one place.

Server to client: ``{"type": "notification", "id", "seq", "event", "payload", "created_at"}``,
``{"type": "pong"}``, ``{"type": "error", "code", "message"}`` (the socket stays open): ``bad_frame`` for
a frame that does not follow this protocol, ``ack_failed`` (with ``ids``) when an acknowledgement could not
be applied: those notifications are still in the offline queue, and the client should ack them again.
Client to server: ``{"type": "ack", "ids": [...]}``, ``{"type": "ping"}``.

Whatever the close code, nothing a client missed is lost: every notification it did not acknowledge
stays in ``GET /notifications/offline/{user_id}``. A reconnecting client should read that queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class CloseCode(IntEnum):
    """Why the server closed a socket. ``RECONNECT`` below says what a client should do."""

    NORMAL = 1000  # the client asked to close
    SERVICE_RESTART = 1012  # the gateway node is shutting down or restarting (uvicorn sends it): reconnect
    INTERNAL_ERROR = 1011  # the node could not register the socket (Redis down): reconnect with backoff
    SLOW_CONSUMER = 4008  # the client read too slowly and its send queue overflowed: reconnect
    BAD_USER_ID = 4400  # the user id in the path is invalid: do not reconnect
    UNAUTHORIZED = 4401  # missing, invalid or expired token (also at the token's exp): reconnect with a fresh one
    FORBIDDEN = 4403  # valid token of another user (or a key without `read`): do not reconnect


RECONNECT: dict[CloseCode, bool] = {
    CloseCode.NORMAL: False,
    CloseCode.SERVICE_RESTART: True,
    CloseCode.INTERNAL_ERROR: True,
    CloseCode.SLOW_CONSUMER: True,
    CloseCode.BAD_USER_ID: False,
    CloseCode.UNAUTHORIZED: True,  # only with a new token; with the same one it is refused again
    CloseCode.FORBIDDEN: False,
}

PONG = '{"type":"pong"}'
MAX_ACK_IDS = 1000


@dataclass(slots=True, frozen=True)
class ClientFrame:
    """A parsed client frame: ``kind`` is "ack" or "ping"; ``ids`` for acks."""

    kind: str
    ids: tuple[str, ...] = ()


class FrameError(ValueError):
    """A client frame that does not follow the protocol; answered with an error frame."""
