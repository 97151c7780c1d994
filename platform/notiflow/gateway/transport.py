"""The socket transport: uvicorn's sans-I/O WebSocket protocol, plus a way to write many frames at once.

Through ASGI every text frame is one ``websocket.send`` message: an await through Starlette and uvicorn,
a frame object built by ``websockets``, and one ``transport.write`` (a syscall) per frame. A fan-out
hands each socket several frames at a time, so this protocol offers the application a ``FrameWriter``
in the scope's extensions (``EXTENSION``): it encodes a whole burst of text frames and writes them with
one ``transport.write``, synchronously, without a task or an await per frame.

Everything else (the handshake, close, pings, reading, permessage-deflate) stays uvicorn's. Frames are
encoded here only for a connection that negotiated no extension; otherwise ``websockets`` encodes them.
Under another server (or another ``ws`` implementation) the extension is absent and the application
falls back to ASGI sends.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

EXTENSION = "notiflow.frame_writer"

_TEXT_FIN = 0x81


def encode_text_frame(data: bytes) -> bytes:
    """One unmasked, unfragmented server-to-client text frame (RFC 6455 §5.2)."""
    n = len(data)
    if n < 126:
        return bytes((_TEXT_FIN, n)) + data
    if n < 65536:
        return bytes((_TEXT_FIN, 126)) + n.to_bytes(2, "big") + data
    return bytes((_TEXT_FIN, 127)) + n.to_bytes(8, "big") + data


class FrameWriter:
    """What the application holds of one socket's protocol: batched writes and write backpressure."""

    __slots__ = ("_protocol", "on_writable")

    def __init__(self, protocol: FrameProtocol) -> None:
        self._protocol = protocol
        #: Called when a transport that had too much buffered drains below its low-water mark.
        self.on_writable: Callable[[], None] | None = None

    @property
    def open(self) -> bool:
        """True while data frames may be sent (not closing, not lost)."""
        p = self._protocol
        return not (p.close_sent or p.disconnected or p.transport.is_closing()) and p.conn.state is State.OPEN

    @property
    def writable(self) -> bool:
        """False while the transport's buffer is over its high-water mark: hold frames until on_writable."""
        return self._protocol.writable.is_set()

    def write_texts(self, texts: list[str]) -> None:
        """Send every text as its own frame, in order, with one write. Nothing is sent once not ``open``."""
        p = self._protocol
        if not self.open:
            return
        if p.conn.extensions:
            for text in texts:
                p.conn.send_text(text.encode())
            p.transport.write(b"".join(p.conn.data_to_send()))
            return
        p.transport.write(b"".join([encode_text_frame(t.encode()) for t in texts]))


class FrameProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol that offers a FrameWriter to the application."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_writer = FrameWriter(self)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The scope exists once the handshake is one we answer with 101; the application's task that reads
        # it has been created, not started, so the extension is there before the application looks.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = {"writer": self.frame_writer}

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.frame_writer.on_writable is not None:
            self.frame_writer.on_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.frame_writer.on_writable = None


def frame_writer(scope: MutableMapping[str, Any]) -> FrameWriter | None:
    """The socket's FrameWriter when the server offers one."""
    ext = (scope.get("extensions") or {}).get(EXTENSION)
    return ext.get("writer") if isinstance(ext, dict) else None
