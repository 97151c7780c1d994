"""The load generator's HTTP client: one keep-alive HTTP/1.1 connection, one request at a time, written and
read with asyncio streams.

The benchmark's producers used httpx, which costs its process about 1.3 ms of CPU per request here: on two
cores a load generator that heavy takes the core the gateway it measures needs (1.0-1.1 cores for 800
requests per second). This client sends a prepared request line and headers and reads the status line,
the headers and a ``content-length`` body (what uvicorn answers), about 30-50 µs per request. It speaks only
what the benchmark needs: no redirects, no chunked bodies, no TLS; anything else is an ``HttpError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024


class HttpError(Exception):
    """The request got no complete answer (connection refused, lost, timed out, or a reply not understood).
    ``kind`` names which, in a closed set (the benchmark counts errors by it)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Response:
    status_code: int
    headers: dict[str, str]  # lower-cased names
    content: bytes


class LeanClient:
    """A client for one ``http://host:port`` origin; reconnects when the server closed the connection."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._origin: tuple[str, int] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, url: str, content: bytes, headers: dict[str, str]) -> Response:
        return await self.request("POST", url, content, headers)

    async def request(self, method: str, url: str, content: bytes = b"", headers: dict[str, str] | None = None
                      ) -> Response:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise HttpError("bad_url", f"only http:// URLs: {url}")
        origin = (parts.hostname, parts.port or 80)
        headers = headers or {}
        head = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
                f"host: {parts.netloc}", f"content-length: {len(content)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + content
        try:
            return await asyncio.wait_for(self._exchange(origin, request), self._timeout)
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            await self.aclose()
            raise HttpError(type(exc).__name__, str(exc)) from exc
        except HttpError:
            await self.aclose()
            raise

    async def _exchange(self, origin: tuple[str, int], request: bytes) -> Response:
        if self._writer is None or self._origin != origin or self._writer.is_closing():
            await self.aclose()
            self._reader, self._writer = await asyncio.open_connection(*origin, limit=MAX_HEAD_BYTES)
            self._origin = origin
        reader, writer = self._reader, self._writer
        assert reader is not None
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError("bad_status_line", repr(status_line[:80])) from None
        fields: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if status in (204, 304):
            return Response(status, fields, b"")  # no body, and uvicorn sends no content-length
        if "content-length" not in fields:
            raise HttpError("no_content_length", f"status {status}")
        body = await reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            await self.aclose()
        return Response(status, fields, body)

    async def aclose(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
