"""Process deaths, with real processes (the DevStack) on real Redis and PostgreSQL: a stream worker dead
between read and ack, a stream worker SIGKILLed under load, a gateway node SIGKILLed (I1, I7)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from helpers import wait_for
from integration_support import SocketFactory, notify, offline_ids, settled, status_of, statuses, users

from notiflow.config import Settings
from notiflow.devstack import DevStack
from notiflow.streams.keys import GROUP

pytestmark = pytest.mark.timeout(90)

StackFactory = Callable[..., DevStack]


async def _start(stack: StackFactory, **kwargs: Any) -> DevStack:
    # DevStack.start blocks until the gateways answer /readyz; keep the event loop free meanwhile.
    return await asyncio.to_thread(stack, **kwargs)


async def _pending_of(rds: aioredis.Redis, stream: str, consumer: str) -> int:
    summary = await rds.xpending(stream, GROUP)
    return sum(int(c["pending"]) for c in summary.get("consumers") or [] if c["name"] == consumer)


async def _ensure_group(rds: aioredis.Redis, stream: str) -> None:
    try:
        await rds.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except aioredis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def test_entries_of_a_worker_dead_between_read_and_ack_are_reclaimed_and_delivered(
    stack: StackFactory, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool, rds: aioredis.Redis,
    settings: Settings,
) -> None:
    # No retry worker: its reconciler could re-enqueue the work; here only the reclaim may recover it.
    dev = await _start(stack, gateways=1, stream_workers=1, retry_workers=0)
    gw = dev.gateway_urls[0]
    dead = dev.node_ids["stream-worker-0"]
    dev.kill("stream-worker-0")
    await _ensure_group(rds, settings.stream_key)  # the worker may have died before creating it

    online, *away = users(4)
    sock = await socket(gw, online)
    ids = [await notify(http, gw, [online, *away], payload={"i": i}) for i in range(10)]
    await wait_for(lambda: rds.xlen(settings.stream_key), timeout_s=5)

    async def all_in_stream() -> bool:
        return await rds.xlen(settings.stream_key) == len(ids)

    await wait_for(all_in_stream, timeout_s=5)
    # The dead worker's state: it read every entry (XREADGROUP as its consumer) and acknowledged none.
    taken: Any = await rds.xreadgroup(GROUP, dead, {settings.stream_key: ">"}, count=1000)
    assert sum(len(entries) for _stream, entries in taken) == len(ids)
    assert await _pending_of(rds, settings.stream_key, dead) == len(ids)
    assert await status_of(db, ids[0], online) == "pending"

    dev.start_process("stream-worker-0")  # a new process, a new consumer name
    replacement = dev.node_ids["stream-worker-0"]
    assert replacement != dead
    # After reclaim_idle_ms (1 s here) the replacement claims them and delivers.
    await sock.wait_ids(ids, timeout_s=20)
    for nid in ids:
        assert await settled(db, nid, timeout_s=20) == {online: "dispatched", **dict.fromkeys(away, "offline")}
    assert await _pending_of(rds, settings.stream_key, dead) == 0
    assert (await rds.xpending(settings.stream_key, GROUP))["pending"] == 0
    assert await rds.xlen(settings.stream_key) == 0
    # Nothing failed, so nothing wrote an attempt row (successful socket hand-offs write none).
    assert await db.fetchval("SELECT count(*) FROM delivery_attempts") == 0
    for user in away:
        assert await offline_ids(http, gw, user) == ids
    # Delivered once each: the reclaim did not duplicate anything.
    assert sorted(f["id"] for f in sock.frames) == sorted(ids)


async def test_stream_worker_sigkilled_under_load_loses_nothing(
    stack: StackFactory, http: httpx.AsyncClient, db: asyncpg.Pool, rds: aioredis.Redis, settings: Settings
) -> None:
    # No retry worker: the reconciler could re-enqueue the work; here only the reclaim may recover it.
    # A worker killed after its ack but before its hand-off write leaves those rows pending: the
    # reconciler's stuck-work sweep (in the retry worker, after stuck_after_s) puts them back on the stream.
    dev = await _start(stack, gateways=1, stream_workers=1, retry_workers=1, worker_batch=10, stuck_after_s=2)
    gw = dev.gateway_urls[0]
    await _ensure_group(rds, settings.stream_key)  # the worker process may not have created it yet
    group = users(8, "load")
    accepted: list[tuple[str, list[str]]] = []

    async def send(tag: int, i: int) -> None:
        chosen = list(dict.fromkeys([group[(tag + i) % 8], group[(tag + 3 * i + 1) % 8]]))
        accepted.append((await notify(http, gw, chosen, payload={"p": tag, "i": i}), chosen))

    async def producer(tag: int) -> None:
        for i in range(60):
            await send(tag, i)

    load = [asyncio.create_task(producer(p)) for p in range(6)]

    # Catch the worker holding entries it has read and not acknowledged: freeze it, make sure the
    # entries are still pending, then SIGKILL it. That is "killed between read and ack", for certain.
    victim = dev.node_ids["stream-worker-0"]
    killed_holding = 0
    extra = 0
    deadline = time.monotonic() + 30
    while not killed_holding:
        assert time.monotonic() < deadline, "never caught the stream worker holding unacknowledged entries"
        if await _pending_of(rds, settings.stream_key, victim) == 0:
            if all(t.done() for t in load):  # the load ended first: keep it coming
                await asyncio.gather(*(send(99, extra + j) for j in range(20)))
                extra += 20
            await asyncio.sleep(0.002)
            continue
        dev.kill("stream-worker-0", signal.SIGSTOP)
        await asyncio.sleep(0.05)  # an XACK already on the wire lands meanwhile
        killed_holding = await _pending_of(rds, settings.stream_key, victim)
        if killed_holding:
            dev.kill("stream-worker-0")
        else:
            dev.kill("stream-worker-0", signal.SIGCONT)

    print(f"stream worker SIGKILLed holding {killed_holding} unacknowledged entries")
    await asyncio.sleep(0.5)  # more accepts while no stream worker runs
    dev.start_process("stream-worker-0")
    await asyncio.gather(*load)
    assert len(accepted) == 360 + extra

    async def drained() -> bool:
        left = await db.fetchval("SELECT count(*) FROM deliveries WHERE status IN ('pending', 'retrying')")
        return left == 0 and int((await rds.xpending(settings.stream_key, GROUP))["pending"]) == 0

    await wait_for(drained, timeout_s=45, interval_s=0.1)
    # I1: every recipient of every accepted notification has it waiting in its offline queue, in seq order.
    expected: dict[str, list[str]] = {u: [] for u in group}
    for nid, chosen in accepted:
        for user in chosen:
            expected[user].append(nid)
    for user in group:
        rows = await db.fetch("SELECT notification_id, seq, status FROM deliveries WHERE user_id = $1", user)
        assert {r["status"] for r in rows} == {"offline"}, user
        assert sorted(r["seq"] for r in rows) == list(range(1, len(expected[user]) + 1)), user
        queue = await offline_ids(http, gw, user)
        assert sorted(queue) == sorted(expected[user]), user
    assert await _pending_of(rds, settings.stream_key, victim) == 0
    # The replacement is a consumer of its own, and it read the stream (the dead one's entries included).
    consumers = {c["name"] for c in await rds.xinfo_consumers(settings.stream_key, GROUP)}
    assert dev.node_ids["stream-worker-0"] in consumers


async def test_killed_gateway_nodes_users_go_offline_within_the_presence_ttl(
    stack: StackFactory, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool, rds: aioredis.Redis,
    settings: Settings,
) -> None:
    dev = await _start(stack, gateways=2, stream_workers=1, retry_workers=1)
    node_a, node_b = dev.gateway_urls
    [wren] = users(1)
    sock = await socket(node_b, wren)
    first = await notify(http, node_a, [wren])
    await sock.wait_ids([first])
    assert await settled(db, first) == {wren: "dispatched"}

    killed_node = dev.node_ids["gateway-1"]
    dev.kill("gateway-1")
    killed_at = time.monotonic()
    sent = [first]
    went_offline_after: float | None = None
    while went_offline_after is None and time.monotonic() - killed_at < settings.presence_ttl_s + 5:
        nid = await notify(http, node_a, [wren])
        sent.append(nid)
        if (await settled(db, nid))[wren] == "offline":
            went_offline_after = time.monotonic() - killed_at
        else:
            await asyncio.sleep(0.2)
    assert went_offline_after is not None, "the dead node's user never counted as offline"
    print(f"SIGKILLed node's user offline after {went_offline_after:.2f}s (ttl {settings.presence_ttl_s}s)")
    assert went_offline_after <= settings.presence_ttl_s + 1.5

    # From the TTL on, the node is gone from presence, and everything sent to the user waits for it.
    async def node_expired() -> bool:
        return await rds.exists(settings.key("node", killed_node, "alive")) == 0

    await wait_for(node_expired, timeout_s=settings.presence_ttl_s + 2)
    later = await notify(http, node_a, [wren])
    sent.append(later)
    assert await settled(db, later) == {wren: "offline"}
    assert await offline_ids(http, node_a, wren) == sent  # what was pushed to the dead node too (I1)
    found = {nid: (await statuses(db, nid))[wren] for nid in sent}
    assert set(found.values()) <= {"dispatched", "offline"}


async def _is_offline(db: asyncpg.Pool, nid: str, user: str) -> bool:
    return await status_of(db, nid, user) == "offline"


async def test_frozen_gateway_nodes_users_go_offline_within_the_ttl_and_resync_when_it_thaws(
    stack: StackFactory, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool, rds: aioredis.Redis,
    settings: Settings,
) -> None:
    """A node that stops without closing its connections (SIGSTOP: a stall, a half-dead host) still counts
    as a Pub/Sub receiver, so only its presence TTL tells the workers it is gone (I7). When it thaws, it
    re-asserts presence and pushes its sockets what they missed."""
    dev = await _start(stack, gateways=2, stream_workers=1, retry_workers=1)
    node_a, node_b = dev.gateway_urls
    [yara] = users(1)
    sock = await socket(node_b, yara)
    first = await notify(http, node_a, [yara])
    await sock.wait_ids([first])

    dev.kill("gateway-1", signal.SIGSTOP)
    frozen_at = time.monotonic()
    sent = [first]
    went_offline_after: float | None = None
    while went_offline_after is None and time.monotonic() - frozen_at < settings.presence_ttl_s + 5:
        sent_after = time.monotonic() - frozen_at
        nid = await notify(http, node_a, [yara])
        sent.append(nid)
        # While the node counts as live, its delivery stays pending: the node heard the publish, so the hand-off
        # is the node's to record, and a frozen node records nothing. Once its presence expired, the worker
        # records offline: within the worker's round and its hand-off delay (0.2 s here).
        with contextlib.suppress(AssertionError):
            await wait_for(lambda nid=nid: _is_offline(db, nid, yara), timeout_s=0.5)
            went_offline_after = sent_after
    assert went_offline_after is not None, "the frozen node's user never counted as offline"
    print(f"frozen node's user offline after {went_offline_after:.2f}s (ttl {settings.presence_ttl_s}s)")
    assert went_offline_after <= settings.presence_ttl_s + 1.5
    assert len(sent) > 2  # it did count as online for a while: the TTL, not a closed socket, decided

    dev.kill("gateway-1", signal.SIGCONT)
    # Everything sent meanwhile reaches the socket: what was published to the frozen node, and (after the
    # node finds its presence expired and re-asserts it) what went to the offline queue.
    await sock.wait_ids(sent, timeout_s=15)
    assert await offline_ids(http, node_a, yara) == sent
    await sock.ack(sent)

    async def all_delivered() -> bool:
        return await offline_ids(http, node_a, yara) == []

    await wait_for(all_delivered, timeout_s=10)
