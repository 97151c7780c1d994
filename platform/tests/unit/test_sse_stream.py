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
from notiflow.gateway.deps import Services
from notiflow.gateway.protocol import CloseCode
from notiflow.gateway.sse import Stream, last_event_id
from notiflow.models import notification_frame

pytestmark = pytest.mark.timeout(10)

NIDS = [uuid.uuid4() for _ in range(10)]
AT = datetime(2026, 12, 7, tzinfo=UTC)


class Queue:
    """The offline queue of one user: rows with seq 1..n, paged as QueryService.offline pages them."""

    def __init__(self, n: int) -> None:
        self.rows = [{"id": NIDS[s - 1], "seq": s, "event": "e", "payload": orjson.Fragment(b'{"s":%d}' % s),
                      "created_at": AT} for s in range(1, n + 1)]

    async def offline(self, user_id: str, after_seq: int, limit: int) -> dict[str, Any]:
        page = [r for r in self.rows if r["seq"] > after_seq][:limit]
        return {"user_id": user_id, "notifications": page,
                "next_after_seq": page[-1]["seq"] if len(page) == limit else None}


def stream(queue_rows: int = 0, after: int = 0, **settings: Any) -> Stream:
    svc = SimpleNamespace(settings=Settings(_env_file=None, **settings), queries=Queue(queue_rows))  # type: ignore[call-arg]
    return Stream(cast(Services, svc), "alice", after, None, lambda: False)


def frame(seq: int) -> str:
    return notification_frame(NIDS[seq - 1], seq, "e", f'{{"s":{seq}}}', AT)


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
