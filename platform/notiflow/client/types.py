"""The client's data and errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

from notiflow.errors import NotiflowError, PermanentError, TransientError


class Notification(TypedDict):
    """One notification as the consumer gets it (SPEC §3's frame without ``type``)."""

    id: str
    seq: int
    event: str
    payload: dict[str, Any]
    created_at: str


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
