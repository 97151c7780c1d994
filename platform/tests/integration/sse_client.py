"""A test client of GET /sse/{user_id}: reads events (and comments) off the stream, one at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson


class SseStream:
    """One open event stream. ``events`` holds the notification events read so far (their data, plus ``_id``:
    the ``id:`` field); ``comments`` the comment lines; ``closed_with`` the data of a ``close`` event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines: AsyncIterator[str] = response.aiter_lines()
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.retry_ms: int | None = None
        self.closed_with: dict[str, Any] | None = None
        self.ended = False

    @property
    def ids(self) -> set[str]:
        return {e["id"] for e in self.events}

    async def read(self, timeout_s: float = 10.0) -> dict[str, str] | None:
        """The next event's fields (a comment is ``{"comment": text}``); None once the stream ended."""
        fields: dict[str, str] = {}
        while True:
            try:
                line = await asyncio.wait_for(anext(self._lines), timeout=timeout_s)
            except StopAsyncIteration:
                self.ended = True
                return None
            if line == "":
                if fields:
                    return self._record(fields)
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                return {"comment": line[1:].strip()}
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")

    def _record(self, fields: dict[str, str]) -> dict[str, str]:
        if "retry" in fields:
            self.retry_ms = int(fields["retry"])
        if fields.get("event") == "notification":
            self.events.append({**orjson.loads(fields["data"]), "_id": fields.get("id")})
        elif fields.get("event") == "close":
            self.closed_with = orjson.loads(fields["data"])
        return fields

    async def wait_ids(self, ids: set[str], timeout_s: float = 10.0) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not ids <= self.ids:
            left = deadline - loop.time()
            if left <= 0 or await self.read(left) is None:
                raise AssertionError(f"events never arrived: {sorted(ids - self.ids)}")
        return [e for e in self.events if e["id"] in ids]

    async def until_end(self, timeout_s: float = 10.0) -> None:
        while await self.read(timeout_s) is not None:
            pass


@contextlib.asynccontextmanager
async def open_sse(
    http: httpx.AsyncClient, base_url: str, user_id: str, *, last_event_id: int | None = None,
    headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
) -> AsyncIterator[SseStream]:
    """Open the stream; yields once the answer's head arrived (the gateway registered the session before
    answering: notifications accepted from now on are routed to it). Raises on an answer other than 200."""
    sent = dict(headers or {})
    if last_event_id is not None:
        sent["last-event-id"] = str(last_event_id)
    async with http.stream("GET", f"{base_url}/sse/{user_id}", headers=sent, params=params,
                           timeout=httpx.Timeout(30, read=None)) as response:
        if response.status_code != 200:
            await response.aread()
            raise httpx.HTTPStatusError(f"{response.status_code}: {response.text}", request=response.request,
                                        response=response)
        yield SseStream(response)
