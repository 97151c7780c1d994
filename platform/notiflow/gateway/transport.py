"""The socket transport: uvicorn's sans-I/O WebSocket protocol, plus a way to write many frames at once.

Through ASGI every text frame is one ``websocket.send`` message: an await through Starlette and uvicorn,
a frame object built by ``websockets``, and one ``transport.write`` (a syscall) per frame; and every
frame received is a queue hop and a task wake-up. A fan-out hands each socket several frames at a time,
and each socket answers with small ack frames, so this protocol offers the application a ``FrameWriter``
in the scope's extensions (``EXTENSION``): it encodes a whole burst of text frames and writes them with
one ``transport.write``, synchronously, without a task or an await per frame, and it hands each text
frame received to a callback (``on_text``) as it is parsed. Binary frames and the disconnect still
arrive through ASGI ``receive``.

Everything else (the handshake, close, pings, permessage-deflate) stays uvicorn's. Frames are encoded
here only for a connection that negotiated no extension; otherwise ``websockets`` encodes them. Likewise
on the way in: while ``websockets``' parser stands at a frame boundary with nothing buffered, a chunk's
leading complete, final, masked text frames are unmasked here and handed to ``on_text`` (the clients' ack
frames: 0.45 µs each here against 3.1 µs through the parser); the parser takes the chunk from the first
byte that is anything else, so it sees a stream that starts at a frame boundary, as it would have.
Under another server (``NOTIFLOW_SERVER=uvicorn``, gateway/serving.py) the extension is absent and the
application falls back to ASGI sends and receives. This is the one module that touches uvicorn's and
websockets' internals: nothing else imports it, except serving.py when ``uvicorn-fast`` is chosen.

An idle socket should cost little memory: the protocol's event queue and write flag are the few methods
uvicorn uses of ``asyncio.Queue`` and ``asyncio.Event``, without their up-front deques, and the handshake's
request and response are let go once answered.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State
from websockets.streams import StreamReader

from notiflow.gateway.serving import EXTENSION

try:
    from websockets.speedups import apply_mask
except ImportError:  # a build of websockets without its C extension
    from websockets.utils import apply_mask

_TEXT_FIN = 0x81
_MASKED = 0x80
_LEN16 = 126
_HEAD16 = struct.Struct("!BBH").pack  # FIN + text opcode, 126, 16-bit length
_HEAD64 = struct.Struct("!BBQ").pack  # FIN + text opcode, 127, 64-bit length
#: Where ``websockets``' parser waits for the next frame with nothing buffered (its loop asks
#: ``reader.at_eof()`` before each frame); waiting anywhere else, it is inside a frame.
_AT_BOUNDARY = StreamReader.at_eof.__code__


def encode_text_frame(data: bytes) -> bytes:
    """One unmasked, unfragmented server-to-client text frame (RFC 6455 §5.2)."""
    n = len(data)
    if n < 126:
        return bytes((_TEXT_FIN, n)) + data
    if n < 65536:
        return _HEAD16(_TEXT_FIN, 126, n) + data
    return _HEAD64(_TEXT_FIN, 127, n) + data


class DirectWriter:
    """The FrameWriter (serving.py) of one socket's protocol: batched writes and write backpressure."""

    __slots__ = ("_protocol", "on_text", "on_writable")

    def __init__(self, protocol: FrameProtocol) -> None:
        self._protocol = protocol
        #: Called when a transport that had too much buffered drains below its low-water mark.
        self.on_writable: Callable[[], None] | None = None
        #: Called with each text message received, instead of queueing it for ASGI ``receive``. It runs in
        #: the protocol's data callback: it must not block and must not raise.
        self.on_text: Callable[[str], None] | None = None

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
        if len(texts) == 1:  # a fan-out's usual burst: one frame per socket per iteration, no join
            p.transport.write(encode_text_frame(texts[0].encode()))
        else:
            p.transport.write(b"".join([encode_text_frame(t.encode()) for t in texts]))


class FrameProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol that offers a FrameWriter (DirectWriter) to the application
    and keeps less per socket (``_Inbox``, ``_Flag``, the handshake let go)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_writer = DirectWriter(self)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
        self.writable.set()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response are not read again once answered (the scope has its own
            # copy of the headers). websockets' parser keeps the request as a local for the socket's life,
            # so its headers are emptied, not only let go: 2.3 kB per socket.
            self.request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The scope exists once the handshake is one we answer with 101; the application's task that reads
        # it has been created, not started, so the extension is there before the application looks.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = {"writer": self.frame_writer}

    def data_received(self, data: bytes) -> None:
        if self._at_frame_boundary():
            taken = self._take_texts(data)
            if taken == len(data):
                return
            data = data[taken:]
        super().data_received(data)

    def _at_frame_boundary(self) -> bool:
        """True when the parser waits for a new frame with nothing buffered, and a text frame would go
        straight to ``on_text``: open, no extension, no fragmented message in progress."""
        conn = self.conn
        if self.frame_writer.on_text is None or self.close_sent or conn.state is not State.OPEN:
            return False
        if conn.extensions or conn.current_size is not None or self.frames or conn.reader.buffer:
            return False
        # The parser is a chain of generators (the handshake's, then the frames' loop, then a read); the
        # innermost is the one waiting.
        waiting: Any = conn.parser
        while (inner := getattr(waiting, "gi_yieldfrom", None)) is not None:
            waiting = inner
        return getattr(waiting, "gi_code", None) is _AT_BOUNDARY

    def _take_texts(self, data: bytes) -> int:
        """Hands each leading complete, final, masked, valid UTF-8 text frame of ``data`` to ``on_text``;
        returns how many bytes those frames took. Anything else stops it, for the parser to judge."""
        limit = self.conn.max_message_size
        end, pos = len(data), 0
        while pos + 6 <= end and data[pos] == _TEXT_FIN and data[pos + 1] & _MASKED:
            length, start = data[pos + 1] & 0x7F, pos + 6
            if length == _LEN16:
                length, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 8
            elif length > _LEN16:
                break  # 64-bit lengths: not an ack frame
            stop = start + length
            if stop > end or (limit is not None and length > limit):
                break
            try:
                text = apply_mask(data[start:stop], data[start - 4 : start]).decode()
            except UnicodeDecodeError:
                break  # the parser's path closes with 1007
            pos = stop
            self._hand_over(text)
            if self.frame_writer.on_text is None or self.close_sent or self.conn.state is not State.OPEN:
                break  # the handler closed the socket: the rest goes the parser's way
        return pos

    def send_receive_event_to_app(self) -> None:
        on_text = self.frame_writer.on_text
        if on_text is None or self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            super().send_receive_event_to_app()  # uvicorn's answer to invalid UTF-8: close 1007
            return
        self.frames = []
        self._hand_over(text)

    def _hand_over(self, text: str) -> None:
        on_text = self.frame_writer.on_text
        assert on_text is not None
        try:
            on_text(text)
        except Exception:
            # A bug in the handler must not escape into the event loop's data callback: this socket ends.
            self.logger.exception("Exception in the socket's text handler")
            self.conn.fail(1011, "internal error")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.transport.close()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.frame_writer.on_writable is not None:
            self.frame_writer.on_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.frame_writer.on_writable = self.frame_writer.on_text = None


class _Flag:
    """What uvicorn's protocol uses of ``asyncio.Event`` (set, clear, is_set, wait), with its waiters' list
    made on the first wait: an Event allocates a deque up front, 760 bytes per socket."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            fut = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(fut)
            await fut


class _Inbox:
    """What uvicorn's protocol uses of ``asyncio.Queue`` (put_nowait, get, empty, qsize) for a socket's
    ASGI events, unbounded like its Queue, without the Queue's three deques and Event (3 kB per socket)."""

    __slots__ = ("_items", "_ready")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._ready = _Flag()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Any:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.pop(0)
