"""Service logic on the memory fakes of its ports (tests/fakes.py): no Redis, no PostgreSQL, milliseconds each.
What delivery promises end to end is tested on the real stores (integration/); these pin the decisions the
services make from what their ports answer."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from fakes import MemoryBuckets, MemoryPresence, NoRecord, RecordingRecord, RecordingRoutes, StubWorkLog
from faults import Faulty
from helpers import wait_for

from notiflow.config import Settings
from notiflow.errors import BackpressureError, RateLimited, StoreUnavailable
from notiflow.models import Carried, NewNotification, StreamEntry
from notiflow.service.delivery import DeliveryService
from notiflow.service.ingest import IngestService
from notiflow.service.ratelimit import CHECK_DEADLINE_S, IngestLimiter

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
NID = uuid.UUID(int=22)


def _settings(**kw: Any) -> Settings:
    return Settings(redis_url="redis://unused", database_url="postgresql://unused", node_id="unit", **kw)


def _fresh(users: tuple[str, ...]) -> StreamEntry:
    return StreamEntry(NID, users, carried=Carried(tuple(range(1, len(users) + 1)), "e", '{"o":1}', NOW, None))


async def _online(presence: MemoryPresence, node: str, *users: str, alive: bool = True) -> None:
    if alive:
        await presence.heartbeat(node, {})
    for user in users:
        await presence.connect(node, user)


def _deliveries(record: Any, work: Any, presence: Any, routes: Any) -> DeliveryService:
    none = cast(Any, None)  # webhooks and their budget: not on the socket path
    return DeliveryService(settings=_settings(), pool=record, work=work, presence=presence, router=routes,
                           webhooks=none, budget=none)


async def test_a_fresh_entry_goes_to_the_live_nodes_that_hear_it_and_reads_nothing_from_postgresql() -> None:
    presence, routes, record = MemoryPresence(), RecordingRoutes(listening={"gw-a"}), RecordingRecord()
    await _online(presence, "gw-a", "ann")
    await _online(presence, "gw-b", "bob", alive=False)  # its node's key expired: bob counts as offline
    service = _deliveries(record, StubWorkLog(), presence, routes)

    assert await service.deliver_socket([_fresh(("ann", "bob", "cid"))]) == []
    assert record.statements == [], "a carried entry's first processing touched PostgreSQL"
    [published] = routes.published
    assert {node: list(b.values()) for node, b in published.items()} == {"gw-a": [[("ann", 1)]]}

    await service.dispatch_log.flush()  # the hand-offs no node heard: one statement for the batch
    [(_, _, (nids, user_ids, states))] = record.statements
    assert sorted(zip(nids, user_ids, states, strict=True)) == [(NID, "bob", "offline"), (NID, "cid", "offline")], (
        "ann's frame was heard by her node: hers is the gateway's to record (dispatched, unless acknowledged)"
    )


async def test_presence_unreachable_fails_each_attempt_onto_the_retry_schedule_in_one_statement() -> None:
    presence = Faulty().around(MemoryPresence())
    presence.fail("live_nodes", StoreUnavailable("redis: injected"))
    work, routes, record = StubWorkLog(), RecordingRoutes(), RecordingRecord()
    service = _deliveries(record, work, presence, routes)

    outcomes = await service.deliver_socket([_fresh(("ann", "bob"))])
    assert [(o.user_id, o.status) for o in outcomes] == [("ann", "retrying"), ("bob", "retrying")]
    assert routes.published == []
    assert [method for method, _, _ in record.statements] == ["fetchrow"]  # recorded before the schedule
    assert len(work.retries) == 2


async def test_the_rate_limit_refuses_past_the_burst_and_fails_open_when_redis_does_not_answer() -> None:
    limiter = IngestLimiter(_settings(ingest_rate_per_s=1, ingest_burst=2), MemoryBuckets())
    limiter.start()
    try:
        await limiter.admit("key-a", 2)
        with pytest.raises(RateLimited):
            await limiter.admit("key-a", 1)
    finally:
        await limiter.close(1)

    buckets = Faulty().around(MemoryBuckets())
    buckets.hang("take")
    limiter = IngestLimiter(_settings(ingest_rate_per_s=1, ingest_burst=2), buckets)
    limiter.start()
    try:
        await asyncio.wait_for(limiter.admit("key-a", 1), CHECK_DEADLINE_S + 1)
        assert limiter.failed_open == 1 and buckets.calls["take"] == 1
    finally:
        await limiter.close(1)


async def test_a_full_backlog_refuses_before_any_postgresql_work() -> None:
    work = Faulty().around(StubWorkLog())
    work.inner.units = 5
    ingest = IngestService(settings=_settings(stream_max_backlog=5), pool=NoRecord(), work=work)
    await ingest.start()
    try:
        await wait_for(lambda: work.calls["backlog"] >= 1, 5, message="the backlog was read")
        item = NewNotification(uuid.uuid4(), ["ann"], "e", "{}", None, None)
        with pytest.raises(BackpressureError):
            await ingest.accept(item)  # NoRecord: a commit attempt would fail with AssertionError instead
    finally:
        await ingest.close(1)
