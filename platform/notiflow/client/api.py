"""The gateway as the client sees it: one open socket (Link) and the HTTP calls (Api), with the token."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection

from notiflow.client.auth import Auth
from notiflow.client.types import AuthFailed, ClientGaveUp, Notification, Unavailable

# A socket ack is confirmed by an ``acked`` frame once committed (SPEC §3). Those sent this recently and not
# confirmed when a socket dies are sent again (acks are idempotent), since the node may have died before it
# committed them; the window bounds what is kept for a gateway that never confirms.
ACK_RESEND_S = 5.0


class Link:
    """One open socket: live frames held back while the offline queue is read, and the pong barrier."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self.ws = ws
        self.url = url
        self.held: list[Notification] | None = []  # None: live mode, frames go straight to the consumer
        self.held_overflow = False
        self.pong = asyncio.Event()
        self.sent_acks: deque[tuple[float, list[str]]] = deque()

    def sent(self, ids: list[str]) -> None:
        now = time.monotonic()
        self.sent_acks.append((now, ids))
        while self.sent_acks[0][0] < now - ACK_RESEND_S:
            self.sent_acks.popleft()

    def confirmed(self, ids: list[str]) -> None:
        """The gateway answered the ack frame of ``ids`` (``acked`` or ``ack_failed``, one per frame, in the
        order they were sent): it needs no resend if the socket dies."""
        for k, (_, sent) in enumerate(self.sent_acks):
            if sent == ids:
                del self.sent_acks[k]
                return


class Api:
    """The offline queue and ack endpoints of any gateway, with ``Authorization: Bearer``."""

    def __init__(self, http: httpx.AsyncClient, auth: Auth, user_id: str) -> None:
        self._http = http
        self._auth = auth
        self.user_path = quote(user_id, safe="")

    async def offline(self, base: str, after_seq: int, limit: int) -> dict[str, Any]:
        """One page: ``{"notifications": [...], "next_after_seq": int | None}``."""
        page: dict[str, Any] = await self._request(
            "GET", base, f"/notifications/offline/{self.user_path}", params={"after_seq": after_seq, "limit": limit}
        )
        return page

    async def ack(self, base: str, body: dict[str, Any]) -> None:
        await self._request("POST", base, f"/notifications/offline/{self.user_path}/ack", json=body)

    async def _request(self, method: str, base: str, path: str, **kwargs: Any) -> Any:
        token = await self._auth.token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            resp = await self._http.request(method, base + path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{method} {base}{path}: {exc!r}") from None
        if resp.status_code in (401, 403):
            raise AuthFailed(resp.status_code, f"{method} {path} answered {resp.status_code}")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise Unavailable(f"{method} {base}{path} answered {resp.status_code}")
        if resp.status_code >= 400:
            raise ClientGaveUp(resp.status_code, f"{method} {path} answered {resp.status_code}: {resp.text[:200]}")
        return resp.json()
