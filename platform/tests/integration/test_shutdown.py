"""Shutdown under one deadline (house style). Found in CI: the rate limit's fail-open test timed out in its
teardown. The gateway's lifespan closed its resources one after another, and the stream worker its webhook calls
then its hand-offs, each allowed the whole ``SHUTDOWN_GRACE_S``: a store that stopped answering held a stop for
several grace periods, past the supervisor's wait before SIGKILL (grace + 5 s in devstack) and the tests' (grace
+ 10 s). CI then failed on an idle gateway's stop (the keep-alive test), which did not happen here (80 stops in a
loop, with and without load, and every full run); what a stop could still wait on without bound is bounded now,
each with its test: uvicorn's stage and the drains each with a grace period of their own, leaving presence, a
cancelled task that does not end, and closing the pools (asyncpg's ``Pool.close`` waits for every connection to
be given back)."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from faults import Faulty, FaultyRecord, StuckWebhooks
from helpers import wait_for
from integration_support import Gateway, Gateways, RunningWorker, Workers, notify, users
from pydantic import SecretStr

from notiflow.lifecycle import RELEASE_S, Deadline
from notiflow.service.ports import Wrappers

pytestmark = pytest.mark.timeout(60)

GRACE_S = 3.0
# What a stop costs besides the drains: uvicorn's 0.1 s pause, its tick, closing the pools. Before the fix
# the two black-holed drains below took 2 × GRACE_S on their own, so the bound separates the two clearly.
SLACK_S = 1.5
CUT = "postgresql pool not released in time: terminated"


async def _time_to_stop(process: Gateway | RunningWorker) -> float:
    """Seconds that stopping ``process`` takes."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await process.stop()
    return loop.time() - started


async def test_a_gateway_with_a_black_holed_redis_stops_within_one_grace_period(
    gateways: Gateways, http: httpx.AsyncClient
) -> None:
    # Both drains meet the black hole (a Redis that takes the command and never answers): the rate-limit
    # check in flight, and the XADD of what was committed. And so does leaving presence, after the drains.
    buckets, work, presence = Faulty(), Faulty(), Faulty()
    buckets.hang("take")
    work.hang("add")
    presence.hang("leave")
    wrappers = Wrappers(buckets=buckets.around, work=work.around, presence=presence.around)
    gw = await gateways.start(shutdown_grace_s=GRACE_S, ingest_rate_per_s=1000, ingest_burst=1000, wrappers=wrappers)
    services = gw.services
    (user,) = users(1)
    answer = await http.post(f"{gw.url}/notifications", json={"user_id": user, "event": "stop.test", "payload": {}})
    assert answer.status_code == 202, answer.text  # committed: the XADD is left to the outbox sweep
    assert services.limiter.failed_open == 1

    took_s = await _time_to_stop(gw)
    assert took_s < GRACE_S + SLACK_S, f"the gateway took {took_s:.2f} s to stop with a grace of {GRACE_S} s"


async def test_a_gateway_with_a_request_in_flight_stops_within_one_grace_period_for_both_stages(
    gateways: Gateways, http: httpx.AsyncClient
) -> None:
    # Stage 1 (uvicorn finishing the request in flight) and stage 2 (the lifespan's drains) both wait on a
    # commit that does not finish: a lock holds the insert. Each stage had a grace period of its own.
    gw = await gateways.start(shutdown_grace_s=GRACE_S)
    locker = await asyncpg.connect(gw.settings.database_url_required)
    try:
        await locker.execute("BEGIN; LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
        (user,) = users(1)
        body = {"user_id": user, "event": "stop.test", "payload": {}}
        request = asyncio.create_task(http.post(f"{gw.url}/notifications", json=body))
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND database = " \
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        await wait_for(lambda: locker.fetchval(waiting), 5, message="the request's commit waits on the lock")

        took_s = await _time_to_stop(gw)
        assert took_s < GRACE_S + SLACK_S, f"the gateway took {took_s:.2f} s to stop with a grace of {GRACE_S} s"
        # The commit was cut: the request was not told 202, and nothing is stored.
        answer = (await asyncio.gather(request, return_exceptions=True))[0]
        assert isinstance(answer, Exception) or answer.status_code != 202, answer
    finally:
        await locker.close()  # rolls back: the lock goes with it
    page = await (await gateways.start()).services.queries.offline(user, 0, 10)
    assert page["notifications"] == [], "a commit cut at shutdown stored its notification"


async def test_a_gateway_whose_database_connection_is_never_given_back_stops_in_bounded_time(
    gateways: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await gateways.start(shutdown_grace_s=GRACE_S)
    await gw.services.pool.acquire()  # a caller that hangs with its connection
    took_s = await _time_to_stop(gw)
    # Nothing was left to drain; the pool was cut RELEASE_S after it began to close.
    assert took_s < RELEASE_S + SLACK_S, f"the gateway took {took_s:.2f} s to stop"
    assert CUT in caplog.messages, "the pool was not cut"


async def test_a_stream_worker_whose_database_connection_is_never_given_back_stops_in_bounded_time(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    record = FaultyRecord()
    running = await workers.stream(shutdown_grace_s=GRACE_S, wrappers=Wrappers(record=record.around))
    await record.hold_one()
    took_s = await _time_to_stop(running)
    assert took_s < RELEASE_S + SLACK_S, f"the stream worker took {took_s:.2f} s to stop"
    assert CUT in caplog.messages, "the pool was not cut"


HOOK = "http://127.0.0.1:9/hook"  # never called: the worker's downstream client is a stuck one


async def _with_work_in_flight(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, webhooks: StuckWebhooks, **worker_settings: object
) -> tuple[RunningWorker, FaultyRecord]:
    """A stream worker in the middle of a webhook call (``webhooks``), holding a hand-off it has not written yet."""
    hosts = {"webhook_allowed_hosts": ["127.0.0.1:9"], "webhook_secret": SecretStr("s" * 32)}
    gw = await gateways.start(**hosts)
    record, work = FaultyRecord(), Faulty()
    running = await workers.stream(
        shutdown_grace_s=GRACE_S, dispatch_record_delay_ms=60_000, webhooks=webhooks,
        wrappers=Wrappers(record=record.around, work=work.around), **hosts, **worker_settings,
    )
    await notify(http, gw.url, users(1), webhook_url=HOOK)
    await asyncio.wait_for(webhooks.calls.wait(), 10)
    # The socket entry's hand-off (offline) is held: the entry was acknowledged after it was added.
    await wait_for(lambda: work.calls["ack"] >= 1, 10, message="the socket entry processed")
    return running, record


async def test_a_stream_worker_with_stuck_work_stops_within_one_grace_period(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    # Both drains meet the black hole: a webhook call that never returns, and the held hand-offs' write to a
    # PostgreSQL that never answers (the dispatch log writes at close whatever it still holds).
    webhooks = StuckWebhooks()
    running, record = await _with_work_in_flight(gateways, workers, http, webhooks)
    record.stall = True

    took_s = await _time_to_stop(running)
    assert webhooks.cancelled == 1, "the stuck call was not cancelled at the end of the grace period"
    assert took_s < GRACE_S + SLACK_S, f"the stream worker took {took_s:.2f} s to stop with a grace of {GRACE_S} s"


async def test_a_stream_worker_task_that_absorbs_its_cancellation_does_not_hold_the_stop(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient
) -> None:
    done = asyncio.Event()
    webhooks = StuckWebhooks(deaf=done)
    try:
        running, _ = await _with_work_in_flight(gateways, workers, http, webhooks)
        took_s = await _time_to_stop(running)
        # Waited for through the grace period, cancelled, then left behind after RELEASE_S.
        assert took_s < 2 * GRACE_S, f"the stream worker took {took_s:.2f} s to stop"
    finally:
        done.set()


async def test_a_gateway_task_that_absorbs_its_cancellation_does_not_hold_the_stop(gateways: Gateways) -> None:
    done, work = asyncio.Event(), Faulty()
    work.deafen("figures", done)  # the telemetry round's read of the stream's figures
    gw = await gateways.start(shutdown_grace_s=GRACE_S, wrappers=Wrappers(work=work.around))
    await asyncio.wait_for(work.waiting["figures"].wait(), 10)  # a telemetry round is under way, and will not end
    try:
        took_s = await _time_to_stop(gw)
        assert took_s < 2 * GRACE_S, f"the gateway took {took_s:.2f} s to stop"
    finally:
        done.set()


async def test_a_deadline_hands_out_what_is_left_and_never_less_than_zero() -> None:
    loop = asyncio.get_running_loop()
    before = loop.time()
    deadline = Deadline(0.2)
    first = deadline.left()
    assert 0.2 - (loop.time() - before) <= first <= 0.2
    await asyncio.sleep(0.05)
    assert deadline.left() < first
    assert Deadline(-1).left() == 0.0
    passed = Deadline(0.01)
    await asyncio.sleep(0.02)
    assert passed.left() == 0.0
