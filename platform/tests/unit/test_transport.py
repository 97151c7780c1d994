"""The hot path's hand-made encodings against the libraries they stand in for: WebSocket text frames (our
FrameWriter against ``websockets``' own serialiser and parser) and Redis commands (``pack_command`` and
``execute_packed`` against a real Redis, error replies and the connection afterwards included)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ResponseError
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol
from websockets.protocol import Side as WsSide

from notiflow.gateway.transport import encode_text_frame
from notiflow.models import Carried, StreamEntry
from notiflow.streams.client import execute_packed, pack_command
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


@pytest.mark.parametrize("arg", ["", "plain", "with\r\nnewline", "ünïcode", "x" * 10_000])
async def test_a_packed_command_is_read_by_redis_as_sent(stores: Any, arg: str) -> None:
    r = aioredis.Redis.from_url(stores.redis_url, decode_responses=True)
    try:
        key = "test:packed:echo"
        packed = pack_command("SET", key, arg) + pack_command("GET", key) + pack_command("DEL", key)
        assert await execute_packed(r, packed, 3) == ["OK", arg, 1]  # raw replies: no redis-py callbacks
    finally:
        await r.aclose()


async def test_an_error_reply_is_raised_and_the_connection_after_it_still_serves(stores: Any) -> None:
    # One connection only: the one the failed pipeline used must come back clean (its unread replies dropped).
    pool = aioredis.BlockingConnectionPool.from_url(
        stores.redis_url, max_connections=1, decode_responses=True
    )
    r = aioredis.Redis.from_pool(pool)
    try:
        key = "test:packed:err"
        packed = pack_command("SET", key, "v") + pack_command("INCR", key) + pack_command("GET", key)
        with pytest.raises(ResponseError):
            await execute_packed(r, packed, 3)
        assert await execute_packed(r, pack_command("GET", key) + pack_command("DEL", key), 2) == ["v", 1]
        assert await r.ping()
    finally:
        await r.aclose()


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
