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
import contextlib

import asyncpg
import httpx
import pytest
from helpers import wait_for
from integration_support import Gateway, Gateways, RunningWorker, Workers, users

from notiflow.lifecycle import RELEASE_S, Deadline

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


async def _black_hole(*_: object, **__: object) -> list[int]:
    await asyncio.sleep(3600)  # a Redis that takes the command and never answers
    return []


async def test_a_gateway_with_a_black_holed_redis_stops_within_one_grace_period(
    gateways: Gateways, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start(shutdown_grace_s=GRACE_S, ingest_rate_per_s=1000, ingest_burst=1000)
    services = gw.services
    # Both drains meet the black hole: the rate-limit check in flight, and the XADD of what was committed.
    services.limiter._buckets.take = _black_hole  # type: ignore[method-assign]
    services.ingest._work.add = _black_hole  # type: ignore[method-assign]
    # And so does leaving presence, after the drains.
    services.sessions._presence.leave = _black_hole  # type: ignore[method-assign]
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
        await wait_for(lambda: gw.services.ingest._in_flight > 0, 5, message="the request is in flight")

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
    running = await workers.stream(shutdown_grace_s=GRACE_S)
    await running.worker._d._pool.acquire()
    took_s = await _time_to_stop(running)
    assert took_s < RELEASE_S + SLACK_S, f"the stream worker took {took_s:.2f} s to stop"
    assert CUT in caplog.messages, "the pool was not cut"


async def test_a_stream_worker_with_stuck_work_stops_within_one_grace_period(workers: Workers) -> None:
    running = await workers.stream(shutdown_grace_s=GRACE_S)
    worker = running.worker
    # Both drains meet the black hole: a webhook call that never returns, and the held hand-offs' write to a
    # PostgreSQL that never answers (the dispatch log writes at close whatever it still holds).
    stuck = asyncio.create_task(_black_hole())
    worker._hooks.add(stuck)
    worker._d.dispatch_log.flush = _black_hole  # type: ignore[method-assign]

    took_s = await _time_to_stop(running)
    assert stuck.cancelled(), "the stuck call was not cancelled at the end of the grace period"
    assert took_s < GRACE_S + SLACK_S, f"the stream worker took {took_s:.2f} s to stop with a grace of {GRACE_S} s"


async def _deaf(done: asyncio.Event) -> None:
    """A task that absorbs its cancellation, as a client library inside a read may, until ``done``."""
    while not done.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await done.wait()


async def test_a_stream_worker_task_that_absorbs_its_cancellation_does_not_hold_the_stop(workers: Workers) -> None:
    running = await workers.stream(shutdown_grace_s=GRACE_S)
    done = asyncio.Event()
    deaf = asyncio.create_task(_deaf(done))
    running.worker._hooks.add(deaf)
    try:
        took_s = await _time_to_stop(running)
        # Waited for through the grace period, cancelled, then left behind after RELEASE_S.
        assert took_s < 2 * GRACE_S, f"the stream worker took {took_s:.2f} s to stop"
        assert not deaf.done()
    finally:
        done.set()
        await deaf


async def test_a_gateway_task_that_absorbs_its_cancellation_does_not_hold_the_stop(gateways: Gateways) -> None:
    gw = await gateways.start(shutdown_grace_s=GRACE_S)
    done, entered = asyncio.Event(), asyncio.Event()

    async def deaf_round() -> None:
        entered.set()
        await _deaf(done)

    gw.services.telemetry.tick = deaf_round  # type: ignore[method-assign]
    await asyncio.wait_for(entered.wait(), 10)  # a telemetry round is under way, and will not end
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
