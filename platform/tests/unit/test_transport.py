"""The hot path's encodings against the libraries they stand in for: WebSocket text frames (our FrameWriter
against ``websockets``' own serialiser and parser), and the stream's many-XADD script call against a real
Redis that lost its scripts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol
from websockets.protocol import Side as WsSide

from notiflow.gateway.transport import encode_text_frame
from notiflow.models import Carried, StreamEntry
from notiflow.streams.work import WorkStream

pytestmark = pytest.mark.timeout(60)

# Around each boundary of the three length encodings (7 bits, 16 bits, 64 bits).
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.mark.parametrize("size", SIZES)
def test_a_text_frame_is_what_websockets_itself_serialises(size: int) -> None:
    data = ("é" * size).encode()[:size] if size else b""
    assert encode_text_frame(data) == Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])


@given(st.lists(st.text(max_size=300), min_size=1, max_size=20))
def test_a_burst_of_frames_parses_back_into_the_same_messages_in_order(texts: list[str]) -> None:
    client = Protocol(WsSide.CLIENT, state=OPEN)
    client.receive_data(b"".join(encode_text_frame(t.encode()) for t in texts))
    frames = client.events_received()
    assert [(f.opcode, f.fin, bytes(f.data).decode()) for f in frames] == [(Opcode.TEXT, True, t) for t in texts]
    assert client.parser_exc is None


async def test_many_xadds_in_one_script_call_survive_a_script_flush(stores: Any, settings: Any) -> None:
    """WorkStream.add sends every entry in one EVALSHA; a Redis that lost its scripts (restart, SCRIPT
    FLUSH) answers NOSCRIPT, and the script is loaded and the call made again: every entry once, in order."""
    r = aioredis.Redis.from_url(stores.redis_url, decode_responses=True)
    work = WorkStream(r, settings)
    try:
        await r.delete(work.stream)
        now = datetime.now(UTC)
        entries = [
            StreamEntry(uuid.uuid4(), (f"u{i}", "v"), carried=Carried((i, i), "e.v", f'{{"i":{i}}}', now, None))
            if i % 2 else StreamEntry(uuid.uuid4(), (f"u{i}",))
            for i in range(50)
        ]
        await r.script_flush()
        first = await work.add(entries[:25])
        second = await work.add(entries[25:])  # the script is loaded now
        stored = await r.xrange(work.stream)
        assert [i for i, _ in stored] == first + second
        assert [StreamEntry.parse(f) for _, f in stored] == entries
    finally:
        await r.delete(work.stream)
        await r.aclose()
