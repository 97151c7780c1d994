"""Which server runs the gateway's sockets (``NOTIFLOW_SERVER``), and what the application may ask of it.

- ``uvicorn-fast`` (the default): uvicorn with the protocol of gateway/transport.py, the one module that
  reaches into uvicorn's and websockets' internals (uvicorn is pinned exactly for it). It offers the
  application a ``FrameWriter`` in the scope's extensions: a burst of frames in one write, each text frame
  received handed to a callback as it is parsed.
- ``uvicorn``: uvicorn's own ``websockets-sansio`` implementation, through its public options only. The
  application sends and receives through ASGI (hub.py's writer task, ws.py's receive loop). Nothing of
  transport.py or http_protocol.py is imported, so nothing arms a deadline on request heads
  (``HTTP_HEADER_TIMEOUT_S``): a reverse proxy in front provides it.

Both serve the HTTP API and the sockets on one port, with the same limits: the frame size bound (1009, on
the frame header, before the payload is read), keepalive pings (a peer that does not answer is closed), the
origin check and the close codes (ws.py), the per-socket send queue (hub.py, 4429 when it overflows).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

#: The key of the scope's extensions under which a server offers a FrameWriter (ASGI lets a server add
#: extensions of its own; the application looks for it and falls back to plain ASGI when it is absent).
EXTENSION = "notiflow.frame_writer"


class FrameWriter(Protocol):
    """What the application holds of a socket when the server offers direct frame writes."""

    #: Called when a transport that had too much buffered drains below its low-water mark.
    on_writable: Callable[[], None] | None
    #: Called with each text message received, instead of an ASGI ``websocket.receive``; it must not block
    #: and must not raise.
    on_text: Callable[[str], None] | None

    @property
    def open(self) -> bool:
        """True while data frames may be sent."""

    @property
    def writable(self) -> bool:
        """False while the transport's buffer is over its high-water mark: hold frames until on_writable."""

    def write_texts(self, texts: list[str]) -> None:
        """Send every text as its own frame, in order, with one write."""


def frame_writer(scope: MutableMapping[str, Any]) -> FrameWriter | None:
    """The socket's FrameWriter when the server offers one (``uvicorn-fast``), else None."""
    ext = (scope.get("extensions") or {}).get(EXTENSION)
    return ext.get("writer") if isinstance(ext, dict) else None


def http_implementation(server: str, header_timeout_s: float) -> Any:
    """uvicorn's ``http`` option for ``NOTIFLOW_SERVER``: under ``uvicorn-fast``, httptools with a deadline on
    request heads (http_protocol.py, the other half of the pinned patch); under ``uvicorn``, its own httptools
    protocol, which arms no such deadline (public options offer none): put a proxy with a header timeout in front,
    as compose's nginx is."""
    if server == "uvicorn-fast":
        from notiflow.gateway.http_protocol import with_header_timeout

        return with_header_timeout(header_timeout_s)
    return "httptools"


def ws_implementation(server: str) -> Any:
    """uvicorn's ``ws`` option for ``NOTIFLOW_SERVER``: transport.py's protocol class (imported only here, and
    only when chosen), or the name of uvicorn's own implementation."""
    if server == "uvicorn-fast":
        from notiflow.gateway.transport import FrameProtocol

        return FrameProtocol
    return "websockets-sansio"
