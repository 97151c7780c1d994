"""The backlog that ingestion's bound is compared with counts notifications (fan-out chunks), not stream
entries: a bundle of 100 counts 100. Without it a bound of 20 admitted 39 notifications in one burst
(test_backlog_burst.py), and a bound of 100,000 entries would have held 100 times the payloads in Redis."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from notiflow.models import Carried, Channel, StreamEntry
from notiflow.streams.work import WorkStream, retry_member

pytestmark = pytest.mark.timeout(30)


def fresh(n: int) -> list[StreamEntry]:
    now = datetime.now(UTC)
    return [StreamEntry(uuid.uuid4(), (f"u{i}",), carried=Carried((1,), "e.v", "{}", now, None)) for i in range(n)]


async def test_units_follow_what_the_stream_names_through_adds_acks_and_retries(stores: Any, settings: Any) -> None:
    r = aioredis.Redis.from_url(stores.redis_url, decode_responses=True)
    work = WorkStream(r, settings)
    try:
        await r.delete(work.stream, work.units_key, work.retry_key)
        await work.ensure_group()
        bundles_and_hook = await work.add([*fresh(150), StreamEntry(uuid.uuid4(), ("h",), Channel.WEBHOOK)])
        assert len(bundles_and_hook) == 3  # 100 and 50 bundled, the webhook entry alone
        assert await work.backlog() == 151
        first, second, hook = bundles_and_hook

        await work.ack([first], [100])
        assert await work.backlog() == 51
        await work.ack([first], [100])  # acknowledged again (a reclaim that lost a race): counted once
        assert await work.backlog() == 51

        now_ms = int(time.time() * 1000)
        await work.schedule([(retry_member(uuid.uuid4(), u, Channel.SOCKET), now_ms - 1) for u in ("a", "b")])
        assert await work.move_due(10) == 2
        assert await work.backlog() == 53

        moved = [i for i, _ in await r.xrange(work.stream) if i not in (second, hook)]
        await work.ack([second, hook, *moved], [50, 1, 1, 1])
        assert await work.backlog() == 0
        assert await r.xlen(work.stream) == 0
    finally:
        await r.delete(work.stream, work.units_key, work.retry_key)
        await r.aclose()


async def test_a_stream_without_units_starts_from_its_length(stores: Any, settings: Any) -> None:
    """A stream written before the units were kept: ensure_group counts its entries one each."""
    r = aioredis.Redis.from_url(stores.redis_url, decode_responses=True)
    work = WorkStream(r, settings)
    try:
        await r.delete(work.stream, work.units_key)
        await work.ensure_group()
        for _ in range(3):
            await r.xadd(work.stream, {"n": str(uuid.uuid4()), "u": "old", "c": "socket"})
        await r.delete(work.units_key)
        await work.ensure_group()
        assert await work.backlog() == 3
        await work.add(fresh(2))  # one bundle: 2 more units
        assert await work.backlog() == 5
    finally:
        await r.delete(work.stream, work.units_key)
        await r.aclose()
