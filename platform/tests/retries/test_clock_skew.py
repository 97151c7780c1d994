"""Workers whose clocks are off from PostgreSQL's (issue 24, window 4).

Due times are written by the stream worker, moved by the retry worker and checked against PostgreSQL's
``now()``; expiry times are fixed by PostgreSQL and checked by the stream worker. Each worker here gets a
skewed machine clock through the factories' ``local_clock`` adapter (nothing global is patched): the
schedule and expiry must follow PostgreSQL's clock all the same.
"""

from __future__ import annotations

import secrets

import pytest
from harness import PlatformFactory
from helpers import wait_for
from sinkserver import Sink

from notiflow.service.clock import RecordClock, SystemClock

pytestmark = pytest.mark.timeout(90)

#: How far a skewed worker's clock is off, ms: far more than a retry's delay here and the load's 1 s of
#: slack, far less than STUCK_AFTER_S (120 s), after which the stale sweep would bring a dropped retry back.
SKEW_MS = 30_000
#: What the downstream asks for, seconds: a retry due this long after its failed call.
RETRY_AFTER_S = 3


class SkewedClock:
    """A machine clock that is ``offset_ms`` off (ahead when positive)."""

    def __init__(self, offset_ms: int) -> None:
        self._system = SystemClock()
        self._offset_ms = offset_ms

    def now_ms(self) -> int:
        return self._system.now_ms() + self._offset_ms


@pytest.mark.parametrize(
    ("stream_ahead_ms", "retry_ahead_ms"), [(SKEW_MS, SKEW_MS), (0, SKEW_MS), (SKEW_MS, 0)],
    ids=["both-ahead", "retry-worker-ahead", "stream-worker-ahead"],
)
async def test_a_retry_comes_back_on_its_backoff_schedule_whatever_the_workers_clocks(
    platform: PlatformFactory, sink: Sink, stream_ahead_ms: int, retry_ahead_ms: int
) -> None:
    plat = await platform(stream_workers=0, retry_workers=0, retry_cap_ms=10_000)
    await plat.start_stream_worker(local_clock=SkewedClock(stream_ahead_ms))
    await plat.start_retry_worker(local_clock=SkewedClock(retry_ahead_ms))
    tag = secrets.token_hex(4)
    # The first call answers 429 with Retry-After: 3, so the retry is due 3 s later by PostgreSQL's clock.
    nid = await plat.notify(user_ids=["ada"], webhook_url=sink.url("throttle", 1, RETRY_AFTER_S, tag))

    # A retry moved early by a retry worker ahead is found "not due yet" and dropped: it would come back
    # only through the stale sweep, after STUCK_AFTER_S (120 s). One due by a stream worker's clock 30 s
    # ahead comes 30 s late.
    await wait_for(lambda: len(sink.hits(tag)) >= 2, timeout_s=25, message="the retry's call")
    await plat.wait_webhook(nid, ["ada"], "succeeded")
    first, second = sink.hits(tag)[:2]
    assert RETRY_AFTER_S - 0.5 <= second.at_s - first.at_s < SKEW_MS / 1000 / 2, (first, second)


async def test_a_stream_worker_ahead_does_not_expire_notifications_early(platform: PlatformFactory) -> None:
    plat = await platform(stream_workers=0, retry_workers=0)
    await plat.start_stream_worker(local_clock=SkewedClock(2 * SKEW_MS))
    nid = await plat.notify(user_ids=["bea"], ttl_seconds=SKEW_MS // 1000)  # expires 30 s after its commit

    async def processed() -> str | None:
        status = str((await plat.delivery(nid, "bea"))["status"])
        return None if status == "pending" else status

    # By a clock 60 s ahead it had expired 30 s ago; by PostgreSQL's it has 30 s to go.
    assert await wait_for(processed, timeout_s=15) == "offline"
    page = (await plat.http.get("/notifications/offline/bea")).json()
    assert [n["id"] for n in page["notifications"]] == [str(nid)]


async def test_a_stream_worker_behind_does_not_deliver_what_has_expired(platform: PlatformFactory) -> None:
    plat = await platform(stream_workers=0, retry_workers=0)
    nid = await plat.notify(user_ids=["cy"], ttl_seconds=1)
    await wait_for(lambda: plat.db.fetchval("SELECT expires_at < now() FROM notifications WHERE id = $1", nid),
                   timeout_s=10, message="expired by PostgreSQL's clock")
    await plat.start_stream_worker(local_clock=SkewedClock(-SKEW_MS))  # by its clock 29 s to go

    async def processed() -> str | None:
        status = str((await plat.delivery(nid, "cy"))["status"])
        return None if status == "pending" else status

    assert await wait_for(processed, timeout_s=15) == "expired"


async def test_the_record_clock_corrects_only_what_it_can_measure(platform: PlatformFactory) -> None:
    plat = await platform(stream_workers=0, retry_workers=0)
    # The same machine as PostgreSQL: its time lies within the round trip, so nothing is corrected.
    same = RecordClock(plat.db, SystemClock())
    await same.sync()
    assert same.offset_ms == 0
    ahead = RecordClock(plat.db, SkewedClock(SKEW_MS))
    await ahead.sync()
    assert -SKEW_MS - 1000 < ahead.offset_ms < -SKEW_MS + 1000
    assert abs(ahead.now_ms() - SystemClock().now_ms()) < 1000
