"""The stream's many-XADD script call against a real Redis that lost its scripts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from notiflow.models import Carried, StreamEntry
from notiflow.streams.work import WorkStream

pytestmark = pytest.mark.timeout(60)

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
