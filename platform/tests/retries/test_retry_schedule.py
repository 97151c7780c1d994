"""The retry schedule (a ZSET scored by due time) under contention and crashes: four retry workers never
move an entry twice, and a retry worker SIGKILLed mid-move leaves every entry in exactly one place."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from harness import start_platform
from helpers import wait_for

from notiflow.config import Settings
from notiflow.devstack import DevStack
from notiflow.models import Channel
from notiflow.streams.work import retry_member

pytestmark = pytest.mark.timeout(60)

Member = tuple[str, str, str]  # (notification id, user id, channel)


def members(n: int) -> dict[str, Member]:
    """``n`` distinct retry members (as the ZSET holds them) and what each one names."""
    out: dict[str, Member] = {}
    for i in range(n):
        nid, user = uuid.uuid4(), f"user-{i}"
        channel = Channel.WEBHOOK if i % 2 else Channel.SOCKET
        out[retry_member(nid, user, channel)] = (str(nid), user, channel.value)
    return out


async def schedule_spread(r: aioredis.Redis, key: str, todo: dict[str, Member], over_s: float) -> None:
    """ZADD every member, due at random times from now to ``over_s`` from now."""
    now_ms = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    for chunk_start in range(0, len(todo), 1000):
        chunk = list(todo)[chunk_start : chunk_start + 1000]
        pipe.zadd(key, {m: now_ms + random.randint(0, int(over_s * 1000)) for m in chunk})
    await pipe.execute()


async def snapshot(r: aioredis.Redis, settings: Settings) -> tuple[list[str], list[Member]]:
    """The ZSET's members and the stream's entries, read in one MULTI: one instant, even while a worker moves."""
    pipe = r.pipeline(transaction=True)
    pipe.zrange(settings.key("retry"), 0, -1)
    pipe.xrange(settings.stream_key)
    scheduled, entries = await pipe.execute()
    return list(scheduled), [(f["n"], f["u"], f["c"]) for _, f in entries]


def check_one_place(todo: dict[str, Member], scheduled: list[str], moved: list[Member]) -> None:
    """Every member is in exactly one of the two places, once; nothing else is anywhere."""
    doubled = [m for m, n in Counter(moved).items() if n > 1]
    assert not doubled, f"{len(doubled)} entries moved twice, e.g. {doubled[:3]}"
    in_zset = {todo[m] for m in scheduled}
    assert not in_zset & set(moved), "entries both in the schedule and in the stream"
    assert in_zset | set(moved) == set(todo.values()), "entries lost"
    assert len(scheduled) + len(moved) == len(todo)


async def test_four_retry_workers_on_one_schedule_never_move_an_entry_twice(settings: Settings) -> None:
    # Small batches and a short poll: many interleaved moves by four workers, each with its own connection.
    n = 3000
    plat = await start_platform(settings, stream_workers=0, retry_workers=0, retry_batch=25, retry_poll_ms=10)
    try:
        todo = members(n)
        workers = [await plat.start_retry_worker() for _ in range(4)]
        await schedule_spread(plat.redis, settings.key("retry"), todo, over_s=1.5)

        async def all_moved() -> bool:
            return await plat.redis.zcard(settings.key("retry")) == 0 and await plat.stream_length() >= n

        await wait_for(all_moved, 15)
        scheduled, moved = await snapshot(plat.redis, settings)
        check_one_place(todo, scheduled, moved)
        assert sum(w.moved for w in workers) == n
        assert sum(1 for w in workers if w.moved) >= 2, [w.moved for w in workers]  # they did contend
    finally:
        assert not await plat.close()


async def test_a_retry_worker_killed_mid_move_loses_nothing(settings: Settings, stack: Callable[..., DevStack]) -> None:
    # A real process and a real SIGKILL, while members keep falling due over 3 s in batches of 5.
    n = 3000
    dev = stack(gateways=0, stream_workers=0, retry_workers=1, retry_batch=5, retry_poll_ms=10)
    r = aioredis.from_url(dev.redis_url, decode_responses=True)
    try:
        await wait_for(lambda: r.exists(settings.key("epoch")), 30, message="the retry worker's first round")
        todo = members(n)
        await schedule_spread(r, settings.key("retry"), todo, over_s=3.0)
        await wait_for(lambda: r.xlen(settings.stream_key), 10, message="the first moves")
        dev.kill("retry-worker-0")
        await wait_for(lambda: not dev.alive("retry-worker-0"), 10)

        scheduled, moved = await snapshot(r, settings)
        assert scheduled and moved, "the kill was meant to land mid-run"
        check_one_place(todo, scheduled, moved)

        dev.start_process("retry-worker-0")  # a successor finishes the job

        async def done() -> bool:
            return await r.zcard(settings.key("retry")) == 0

        await wait_for(done, 20)
        scheduled, moved = await snapshot(r, settings)
        assert scheduled == [] and len(moved) == n
        check_one_place(todo, scheduled, moved)
    finally:
        await r.aclose()
