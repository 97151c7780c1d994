"""What gateway/transport.py (NOTIFLOW_SERVER=uvicorn-fast) relies on in the installed uvicorn and websockets,
one test per attribute it reads or replaces, so that a release that renames or drops one fails here, not
inside ``data_received`` on a live socket. The plain server (``uvicorn``) relies on none of it."""

from __future__ import annotations

import inspect
import os
import re
from types import SimpleNamespace

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from notiflow.gateway.transport import FrameProtocol

pytestmark = pytest.mark.timeout(30)

#: uvicorn's protocol: the instance attributes transport.py reads or replaces.
UVICORN_ATTRIBUTES = (
    "close_sent", "conn", "curr_msg_data_type", "disconnected", "frames", "handshake_complete", "logger", "queue",
    "request", "response", "scope", "transport", "writable",
)
#: uvicorn's protocol: the methods transport.py overrides or calls.
UVICORN_METHODS = (
    "connection_lost", "data_received", "handle_connect", "resume_writing", "send", "send_receive_event_to_app",
)
#: websockets' connection (``conn``): what transport.py reads or calls on it.
WEBSOCKETS_ATTRIBUTES = (
    "current_size", "data_to_send", "extensions", "fail", "max_message_size", "parser", "reader", "send_text",
    "state",
)
HANDSHAKE = (
    b"GET /ws/u HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize("name", UVICORN_ATTRIBUTES)
def test_uvicorns_protocol_still_sets_the_attribute(name: str) -> None:
    source = inspect.getsource(WebSocketsSansIOProtocol)
    assert re.search(rf"self\.{name}\s*(:[^=\n]*)?=[^=]", source), f"uvicorn no longer sets self.{name}"


@pytest.mark.parametrize("name", UVICORN_METHODS)
def test_uvicorns_protocol_still_has_the_method(name: str) -> None:
    assert callable(getattr(WebSocketsSansIOProtocol, name, None)), f"uvicorn's protocol has no {name}()"


@pytest.mark.parametrize("name", WEBSOCKETS_ATTRIBUTES)
def test_websockets_connection_still_has_the_attribute(name: str) -> None:
    assert hasattr(ServerProtocol(), name), f"websockets' ServerProtocol has no {name}"


def _open_connection() -> ServerProtocol:
    conn = ServerProtocol()
    conn.receive_data(HANDSHAKE)
    [request] = conn.events_received()
    conn.send_response(conn.accept(request))
    assert conn.state is State.OPEN
    return conn


def test_the_frame_boundary_is_found_in_websockets_parser() -> None:
    """The direct read path is taken only where websockets' parser waits for a new frame; inside a frame whose
    header it has read, with nothing buffered, it must not be (only the parser's generator frames tell)."""
    conn = _open_connection()
    protocol = SimpleNamespace(frame_writer=SimpleNamespace(on_text=print), close_sent=False, conn=conn, frames=[])
    assert FrameProtocol._at_frame_boundary(protocol)  # type: ignore[arg-type]
    data, mask = b'{"type":"ping"}', os.urandom(4)
    frame = bytes([0x81, 0x80 | len(data)]) + mask + apply_mask(data, mask)
    conn.receive_data(frame[:6])  # header and mask read, the payload awaited: nothing buffered
    assert not conn.reader.buffer
    assert not FrameProtocol._at_frame_boundary(protocol)  # type: ignore[arg-type]
    conn.receive_data(frame[6:])
    assert [f.data for f in conn.events_received()] == [data]
    assert FrameProtocol._at_frame_boundary(protocol)  # type: ignore[arg-type]


#: uvicorn's httptools protocol: the methods gateway/http_protocol.py overrides, each calling the original
#: (asyncio.Protocol's connection callbacks and httptools' parser callbacks).
HTTPTOOLS_METHODS = ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete")


@pytest.mark.parametrize("name", HTTPTOOLS_METHODS)
def test_uvicorns_httptools_protocol_still_has_the_method(name: str) -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from notiflow.gateway.http_protocol import HeaderDeadlineProtocol

    assert callable(getattr(HttpToolsProtocol, name, None)), f"uvicorn's httptools protocol has no {name}()"
    assert issubclass(HeaderDeadlineProtocol, HttpToolsProtocol)
