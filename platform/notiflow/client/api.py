"""The gateway as the client sees it: one open socket (Link) and the HTTP calls (Api), with the token."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection

from notiflow.client.auth import Auth
from notiflow.client.types import AuthFailed, ClientGaveUp, Notification, Unavailable

# A socket ack frame carries a ``ref`` (a counter per socket) and is confirmed by ``{"type": "acked", "ref"}``
# once committed (SPEC §3). Those sent this recently and not answered when a socket dies are sent again (acks
# are idempotent), since the node may have died before it committed them; the window bounds what is kept for
# a gateway that never answers.
ACK_RESEND_S = 5.0


class Link:
    """One open socket: live frames held back while the offline queue is read, and the pong barrier."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self.ws = ws
        self.url = url
        self.held: list[Notification] | None = []  # None: live mode, frames go straight to the consumer
        self.held_overflow = False
        self.pong = asyncio.Event()
        #: Ack frames not answered yet, by ref, oldest first: (sent at, ids).
        self.sent_acks: dict[int, tuple[float, list[str]]] = {}
        self._next_ref = 0

    def sent(self, ids: list[str]) -> int:
        """Registers an ack frame of ``ids`` about to be sent (before, so its answer always finds it); the
        frame's ``ref``."""
        now = time.monotonic()
        ref = self._next_ref
        self._next_ref += 1
        acks = self.sent_acks
        acks[ref] = (now, ids)
        while (oldest := next(iter(acks))) != ref and acks[oldest][0] < now - ACK_RESEND_S:
            del acks[oldest]
        return ref

    def confirmed(self, ref: Any) -> list[str]:
        """The gateway answered the ack frame ``ref`` (``acked`` or ``ack_failed``): it needs no resend if the
        socket dies. Its ids (none when the ref is not one of this socket's acks awaiting an answer)."""
        entry = self.sent_acks.pop(ref, None) if isinstance(ref, int) else None
        return entry[1] if entry is not None else []

    def unanswered(self) -> list[str]:
        """The ids of every ack frame not answered yet, oldest first; forgets them."""
        ids = [nid for _, sent in self.sent_acks.values() for nid in sent]
        self.sent_acks.clear()
        return ids


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
