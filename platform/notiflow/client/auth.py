"""The client's credential: a fixed token, or a callable asked again after a refusal."""

from __future__ import annotations

from notiflow.client.types import AuthFailed, Token

# Refused this many times in a row even after refreshing: the callable keeps handing out bad tokens.
MAX_REFRESHES = 3


class Auth:
    def __init__(self, token: Token) -> None:
        self._source = token
        self._current: str | None = token if isinstance(token, str) else None
        self._stale = not isinstance(token, str) and token is not None
        self._refusals = 0

    async def token(self) -> str | None:
        """The token to send now (None: send none); refreshed first if the last one was refused."""
        if callable(self._source) and (self._stale or self._current is None):
            self._current = await self._source()
            self._stale = False
        return self._current

    def can_refresh(self, refused: AuthFailed) -> bool:
        """After ``refused``: True if a fresh token is worth a try (it is fetched on the next ``token()``)."""
        self._refusals += 1
        if refused.code == 403 or not callable(self._source) or self._refusals > MAX_REFRESHES:
            return False
        self._stale = True
        return True

    def succeeded(self) -> None:
        self._refusals = 0
