"""uvicorn's httptools protocol with a deadline on a request's head (issue 25, finding 5); the HTTP half of
the exactly pinned uvicorn patch (transport.py is the socket half), used only under ``NOTIFLOW_SERVER=uvicorn-fast``
(serving.py) and held to the pinned release by tests/unit/test_transport_pin.py.

uvicorn arms no timer while a request's line and headers arrive: its keep-alive timer is cancelled by the
first byte, and a fresh connection has none at all. A client that sends nothing, or one header line a
minute (slowloris), holds its connection for as long as it likes. Here each connection gets
``http_header_timeout_s`` from its start, and each request as much from its first byte, to finish its
headers; past that the connection is closed. A request's body is not under this deadline.

Only documented hooks are used: ``connection_made``/``connection_lost`` (asyncio.Protocol), the parser
callbacks ``on_message_begin``/``on_headers_complete`` (httptools), and a protocol class passed as uvicorn's
``http`` option; each override calls the original first or last.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request head is not complete in time."""

    #: Set per server by ``with_header_timeout`` (uvicorn builds protocols from a class, with its own args).
    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._raw: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._raw = transport
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = asyncio.get_running_loop().call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _expired(self) -> None:
        self._head_deadline = None
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()


def with_header_timeout(timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for one server, its deadline bound in (uvicorn instantiates it per connection)."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout_s": timeout_s})
