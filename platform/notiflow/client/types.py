"""The client's data and errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NotRequired, TypedDict

from notiflow.errors import NotiflowError, PermanentError, TransientError


class Notification(TypedDict):
    """One notification as the consumer gets it (SPEC §3's frame without ``type``)."""

    id: str
    seq: int
    event: str
    payload: dict[str, Any]
    created_at: str
    #: The notification's collapse key, when it has one (client/collapse.py).
    collapse_key: NotRequired[str]
    #: The id of the notification of the same key this client handed over before: show this one in its place.
    replaces: NotRequired[str]


Token = str | Callable[[], Awaitable[str]] | None
"""A JWT or API key, or an async callable returning a fresh one (called again after a 401/4401)."""

TakenHook = Callable[[Notification], None]


class ClientError(NotiflowError):
    """Root of the client's errors."""


class ClientGaveUp(ClientError, PermanentError):
    """The gateway said not to come back (4400 bad user id, 4403, a refused token that cannot be refreshed)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code


class Unavailable(ClientError, TransientError):
    """No answer from a gateway, or a 5xx/429: try again, maybe elsewhere."""


class AuthFailed(ClientError):
    """A 401/403 answer or a 4401 close: refresh the token if we can, else give up."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class RequestRejected(ClientError, PermanentError):
    """The gateway refused the request with a 4xx (other than 429): sending it again will not help.
    ``status``, ``code``, ``message`` and ``details`` are the SPEC §2 error body's."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        #: send_many: what earlier chunks of the same call got (they were accepted before this refusal).
        self.accepted: list[Any] = []
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class InvalidNotification(RequestRejected):
    """400, 413, 415 or 422: the notification (or batch) is malformed or too large; nothing was stored."""


class IdempotencyKeyReused(RequestRejected):
    """422 ``idempotency_key_reused``: the key was used before with a different body."""


class NotAllowed(RequestRejected):
    """401 or 403: the credentials are missing, invalid, or lack the ``send`` scope."""


class OutcomeUnknown(Unavailable):
    """Retries ran out while the last answer was ``outcome_unknown`` or no answer: the notification may
    exist. Sending it again with ``idempotency_key`` is safe."""

    def __init__(self, message: str, idempotency_key: str | None) -> None:
        super().__init__(message)
        self.idempotency_key = idempotency_key
