"""How a gateway reads what clients send on a socket, byte by byte: whole frames, frames split anywhere,
fragmented messages and control frames between them all come through as the messages the client sent.

The client here is raw: the test writes every byte, in the splits it chooses, and reads the gateway's frames
with ``websockets``' own client protocol. Each probe is an ack naming an id that is no notification id, which
the gateway answers with an error frame quoting it: one answer per text message read, in the order read.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio
from helpers import wait_for
from integration_support import Gateways
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri
from websockets.utils import apply_mask

from notiflow.gateway.protocol import PONG

pytestmark = pytest.mark.timeout(60)


def client_frame(opcode: Opcode, data: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A masked client frame (RFC 6455 §5.2), with a random mask unless one is given."""
    mask = os.urandom(4) if mask is None else mask
    first = (0x80 if fin else 0) | opcode
    n = len(data)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + apply_mask(data, mask)


def probe(tag: str) -> bytes:
    return orjson.dumps({"type": "ack", "ids": [tag]})


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proto: ClientProtocol) -> None:
        self._reader, self._writer, self._proto = reader, writer, proto
        self._frames: list[Frame] = []

    @classmethod
    async def open(cls, url: str) -> RawSocket:
        proto = ClientProtocol(parse_uri(url))
        host, port = url.removeprefix("ws://").split("/", 1)[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        proto.send_request(proto.connect())
        sock = cls(reader, writer, proto)
        sock.write(b"".join(proto.data_to_send()))
        while True:
            events = await sock._feed()
            if any(isinstance(e, Response) for e in events):
                assert proto.handshake_exc is None, proto.handshake_exc
                sock._frames.extend(e for e in events if isinstance(e, Frame))
                return sock

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def _feed(self) -> list[object]:
        chunk = await asyncio.wait_for(self._reader.read(65536), 10)
        if chunk:
            self._proto.receive_data(chunk)
        else:
            self._proto.receive_eof()
        self._writer.write(b"".join(self._proto.data_to_send()))  # pongs, the close reply
        events: list[object] = list(self._proto.events_received())
        if not chunk and not events:
            raise EOFError("the gateway closed the connection")
        return events

    async def frame(self) -> Frame:
        while not self._frames:
            self._frames.extend(e for e in await self._feed() if isinstance(e, Frame))
        return self._frames.pop(0)

    async def text(self) -> str:
        """The next text message, skipping control frames."""
        while (f := await self.frame()).opcode is not Opcode.TEXT:
            assert f.opcode in (Opcode.PING, Opcode.PONG), f
        return bytes(f.data).decode()

    async def answered(self, tag: str) -> None:
        message = orjson.loads(await self.text())
        # The gateway quotes an id up to its 64th character.
        assert message["code"] == "bad_frame" and repr(tag[:64]) in message["message"], (tag, message)

    async def close_code(self) -> int:
        while (f := await self.frame()).opcode is not Opcode.CLOSE:
            pass
        return Close.parse(f.data).code

    def close(self) -> None:
        self._writer.close()


@pytest_asyncio.fixture
async def raw(gateways: Gateways) -> AsyncIterator[RawSocket]:
    gateway = await gateways.start()
    sock = await RawSocket.open(gateway.ws_url(f"raw-{os.urandom(4).hex()}"))
    try:
        # Answered once the socket's reader is in place: from here on, text frames take the direct path.
        sock.write(client_frame(Opcode.TEXT, b'{"type":"ping"}'))
        assert await sock.text() == PONG
        yield sock
    finally:
        sock.close()


async def test_text_frames_split_at_any_byte_are_each_read_once_and_in_order(raw: RawSocket) -> None:
    # The middle frame has a 16-bit length; each split leaves the parser inside it, at every offset (within
    # the header, the mask and the payload), after a complete frame read in the same chunk. Its mask makes
    # its payload start with what looks like a frame header (a masked final text frame of 10 bytes): a
    # reader that took the chunk after the mask for a new frame would read that.
    for k in range(1, 8 + 4 + len(probe("b-000-" + "x" * 200))):
        tags = [f"a-{k:03}", f"b-{k:03}-" + "x" * 200, f"c-{k:03}"]
        middle = probe(tags[1])
        decoy = bytes([middle[0] ^ 0x81, middle[1] ^ 0x8A, 0, 0])
        a, b, c = (
            client_frame(Opcode.TEXT, probe(tags[0])),
            client_frame(Opcode.TEXT, middle, mask=decoy),
            client_frame(Opcode.TEXT, probe(tags[2])),
        )
        assert b[8:10] == b"\x81\x8a"
        raw.write(a + b[:k])
        await raw.answered(tags[0])
        raw.write(b[k:] + c)
        await raw.answered(tags[1])
        await raw.answered(tags[2])


async def test_control_frames_and_fragmented_messages_between_text_frames_keep_their_order(
    raw: RawSocket,
) -> None:
    fragmented = probe("c-fragmented")
    raw.write(
        client_frame(Opcode.TEXT, probe("a"))
        + client_frame(Opcode.PING, b"p1")
        + client_frame(Opcode.TEXT, probe("b"))
        + client_frame(Opcode.TEXT, fragmented[:10], fin=False)
        + client_frame(Opcode.CONT, fragmented[10:])
        + client_frame(Opcode.TEXT, probe("d"))
    )
    frames = [await raw.frame() for _ in range(5)]
    assert [(f.opcode, bytes(f.data)) for f in frames if f.opcode is Opcode.PONG] == [(Opcode.PONG, b"p1")]
    texts = [orjson.loads(f.data)["message"] for f in frames if f.opcode is Opcode.TEXT]
    assert [t.rsplit(" ", 1)[-1] for t in texts] == ["'a'", "'b'", "'c-fragmented'", "'d'"]


async def test_a_text_frame_inside_a_fragmented_message_is_a_protocol_error(raw: RawSocket) -> None:
    # The message's first fragment in one chunk, then (once a ping shows that it was read) a whole text frame.
    raw.write(client_frame(Opcode.TEXT, b'{"type":', fin=False) + client_frame(Opcode.PING, b"read"))
    while (await raw.frame()).opcode is not Opcode.PONG:
        pass
    raw.write(client_frame(Opcode.TEXT, probe("a")))
    assert await raw.close_code() == 1002


async def test_invalid_utf8_closes_with_1007_and_nothing_after_it_is_read(raw: RawSocket) -> None:
    raw.write(
        client_frame(Opcode.TEXT, probe("a"))
        + client_frame(Opcode.TEXT, b"\xff\xfe")
        + client_frame(Opcode.TEXT, probe("b"))
    )
    texts = []
    while (f := await raw.frame()).opcode is not Opcode.CLOSE:
        texts.append(bytes(f.data).decode())
    assert Close.parse(f.data).code == 1007
    # The answer to "a" may or may not make it out before the close (as through the parser alone); "b"'s never.
    assert not any("'b'" in t for t in texts), texts


async def test_a_peer_that_answers_no_ping_is_closed_with_1011_and_leaves_the_hub(gateways: Gateways) -> None:
    """Dead-peer detection (NOTIFLOW_WS_PING_INTERVAL_S / NOTIFLOW_WS_PING_TIMEOUT_S): a client that stops
    reading answers no keepalive ping; the gateway closes the socket and lets it go."""
    gateway = await gateways.start(ws_ping_interval_s=0.2, ws_ping_timeout_s=0.3)
    sock = await RawSocket.open(gateway.ws_url(f"raw-{os.urandom(4).hex()}"))
    try:
        sock.write(client_frame(Opcode.TEXT, b'{"type":"ping"}'))
        assert await sock.text() == PONG  # in the hub; from here on the client reads (and answers) nothing
        await wait_for(lambda: gateway.services.hub.size == 0, timeout_s=10, message="the dead peer is still held")
        assert await sock.close_code() == 1011
    finally:
        sock.close()
