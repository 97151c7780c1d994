"""One SSE stream's writer (gateway/sse.py's Stream) without a server: the replay then live frames de-duplicated
by seq, a slow reader ended with 4008 and a bounded buffer, the closing event, Last-Event-ID parsing. The
stream's services are a stand-in carrying only what a Stream reads (settings and the offline queue)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from notiflow.config import Settings
from notiflow.errors import ApiError
from notiflow.frames import notification_frame
from notiflow.gateway.deps import Services
from notiflow.gateway.protocol import CloseCode
from notiflow.gateway.sse import Stream, last_event_id

pytestmark = pytest.mark.timeout(10)

AT = datetime(2026, 12, 7, tzinfo=UTC)


class Queue:
    """The offline queue of one user: rows with seq 1..n, paged as QueryService.offline pages them."""

    def __init__(self, n: int, acked: frozenset[int] = frozenset()) -> None:
        self.committed = n
        self.rows = [{"id": uuid.UUID(int=s), "seq": s, "event": "e", "payload": orjson.Fragment(b'{"s":%d}' % s),
                      "created_at": AT} for s in range(1, n + 1) if s not in acked]

    async def last_seq(self, user_id: str) -> int:
        return self.committed

    async def offline(self, user_id: str, after_seq: int, limit: int) -> dict[str, Any]:
        page = [r for r in self.rows if r["seq"] > after_seq][:limit]
        return {"user_id": user_id, "notifications": page,
                "next_after_seq": page[-1]["seq"] if len(page) == limit else None}


def stream(queue_rows: int = 0, after: int = 0, acked: frozenset[int] = frozenset(), **settings: Any) -> Stream:
    svc = SimpleNamespace(settings=Settings(_env_file=None, **settings), queries=Queue(queue_rows, acked))  # type: ignore[call-arg]
    return Stream(cast(Services, svc), "alice", after, None, lambda: False)


def frame(seq: int) -> str:
    return notification_frame(uuid.UUID(int=seq), seq, "e", f'{{"s":{seq}}}', AT)


def seqs(text: str) -> list[int]:
    return [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]


async def test_replay_after_the_last_event_id_then_live_frames_without_repeats() -> None:
    s = stream(queue_rows=5, after=2)
    replayed = "".join([chunk async for chunk in s.replay()])
    assert seqs(replayed) == [3, 4, 5]
    assert "event: notification\ndata: {" in replayed and '"payload":{"s":3}' in replayed and '"type"' not in replayed
    live = s.live()
    for seq in (4, 5, 6, 6):  # 4 and 5 raced the replay; 6 comes twice (a resync)
        s.conn.push(frame(seq))
    assert seqs(await asyncio.wait_for(anext(live), 5)) == [6]
    s.conn.stop()


def ids_and_seqs(text: str) -> list[tuple[int | None, int]]:
    """(the id: line or None, the data's seq) of each event."""
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            out.append((int(lines["id"]) if "id" in lines else None, orjson.loads(lines["data"])["seq"]))
    return out


async def test_an_event_carries_its_id_only_when_nothing_below_it_is_missing() -> None:
    """A resume after Last-Event-ID must not skip a notification pushed out of order and cut off with the
    connection: an event above a hole goes without ``id:`` until the hole fills."""
    s = stream(queue_rows=6, after=0, acked=frozenset({2}))
    replayed = "".join([chunk async for chunk in s.replay()])
    assert ids_and_seqs(replayed) == [(1, 1), (3, 3), (4, 4), (5, 5), (6, 6)], "acked seqs are no hole"
    live = s.live()
    s.conn.push(frame(8))  # 7 is retrying: 8 comes first
    assert ids_and_seqs(await asyncio.wait_for(anext(live), 5)) == [(None, 8)]
    s.conn.push(frame(7))  # the hole fills: a client that got 7 has 8 (sent before it), resume after 7 is safe
    assert ids_and_seqs(await asyncio.wait_for(anext(live), 5)) == [(7, 7)]
    assert s.watermark == 8
    s.conn.push(frame(9))
    assert ids_and_seqs(await asyncio.wait_for(anext(live), 5)) == [(9, 9)]
    s.conn.stop()


async def test_a_fresh_stream_of_a_user_who_acknowledged_everything_gives_ids() -> None:
    s = stream(queue_rows=100, acked=frozenset(range(1, 101)))  # 100 sent, all acknowledged: an empty queue
    assert [chunk async for chunk in s.replay()] == [] and s.watermark == 100
    live = s.live()
    s.conn.push(frame(101))
    assert ids_and_seqs(await asyncio.wait_for(anext(live), 5)) == [(101, 101)]
    s.conn.stop()


async def test_a_slow_reader_is_ended_with_4008_and_its_buffer_stays_bounded() -> None:
    s = stream(ws_queue_max=3)
    for seq in range(1, 10):
        s.conn.push(frame(seq))
        await asyncio.sleep(0)  # let the connection hand frames to the stream, which nobody reads
    assert s.closing == CloseCode.SLOW_CONSUMER and s.conn.buffered <= 3
    rest = [chunk async for chunk in s.live()]
    assert rest == ['event: close\ndata: {"code":4008,"reason":"slow_consumer"}\n\n']


async def test_keep_alive_comments_while_idle() -> None:
    s = stream(sse_keepalive_s=0.05)
    live = s.live()
    assert await asyncio.wait_for(anext(live), 5) == ": keep-alive\n\n"
    s.conn.close(CloseCode.SERVICE_RESTART)
    assert "1012" in await asyncio.wait_for(anext(live), 5)


def test_last_event_id_is_a_seq_or_refused() -> None:
    def of(value: str | None) -> int:
        headers = {} if value is None else {"last-event-id": value}
        return last_event_id(cast(Any, SimpleNamespace(headers=headers)))

    assert of(None) == 0 and of("") == 0 and of("17") == 17 and of(" 17 ") == 17
    for bad in ("-1", "x", "1.5", str(2**63)):
        with pytest.raises(ApiError) as refused:
            of(bad)
        assert refused.value.code == "invalid_last_event_id"
