"""One error root, split into transient (retry it) and permanent (do not)."""

from __future__ import annotations

from typing import Any


class NotiflowError(Exception):
    """Root of every error notiflow raises on purpose."""


class TransientError(NotiflowError):
    """Might succeed if tried again later: a store timed out, a downstream answered 5xx."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(NotiflowError):
    """Will fail the same way every time: bad input, a downstream's 4xx, a poison entry."""


class StoreUnavailable(TransientError):
    """PostgreSQL or Redis did not answer, or answered with a connection-level error."""


class CommitOutcomeUnknown(StoreUnavailable):
    """PostgreSQL failed after a write was sent (a reset or timeout mid-statement): it may or may not have
    committed. Nobody can tell the client "not stored"; a retry with the same Idempotency-Key is safe."""


class StoreBusy(StoreUnavailable):
    """A statement waited for a row lock past ``pg_lock_timeout_ms`` (another transaction holds it, maybe a
    stalled one) and was rolled back: nothing of it was written, and it may simply run again."""


class BackpressureError(TransientError):
    """Ingestion is over its backlog bound; the client should come back after ``retry_after_s``."""


class RateLimited(BackpressureError):
    """This client is over its ingest rate; it may come back after ``retry_after_s``."""


class DownstreamError(TransientError):
    """A webhook call failed in a way that may heal (5xx, 429, timeout, connection error)."""


class DownstreamRejected(PermanentError):
    """A webhook answered with a 4xx other than 429: retrying will not help."""


class ApiError(PermanentError):
    """A client error answered with ``status`` and the SPEC §2 error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class NotFound(ApiError):
    """The named resource does not exist."""

    def __init__(self, what: str) -> None:
        super().__init__(404, "not_found", f"{what} not found")


class IdempotencyConflict(ApiError):
    """The Idempotency-Key was used before with a different body."""

    def __init__(self) -> None:
        super().__init__(
            422, "idempotency_key_reused", "Idempotency-Key was already used with a different request body"
        )


class Unauthorized(ApiError):
    """No credentials, or credentials that are malformed, forged, expired, unknown or revoked (401)."""

    def __init__(self, message: str, code: str = "unauthorized") -> None:
        super().__init__(401, code, message)


class Forbidden(ApiError):
    """Valid credentials that do not allow this request (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(403, "forbidden", message)


class AuthNotConfigured(PermanentError):
    """A gateway with authentication on but no way to authenticate anyone: it refuses to start."""
