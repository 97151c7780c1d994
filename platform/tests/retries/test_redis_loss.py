"""Redis loses its data mid-run: pending retries and unfinished stream work are rebuilt from PostgreSQL
by the reconciler, and nothing accepted is lost."""

from __future__ import annotations

import secrets
import uuid

import pytest
from harness import Platform, PlatformFactory
from helpers import wait_for
from sinkserver import Sink

pytestmark = pytest.mark.timeout(60)


async def lose_redis_data(plat: Platform) -> int:
    """FLUSHALL, for this test's namespace: the Redis server may be shared (NOTIFLOW_TEST_REDIS_URL), so
    only this test's keys go (the stream, the retry schedule, the epoch, presence, everything)."""
    r, prefix = plat.redis, plat.settings.key_prefix
    assert plat.settings.stream_key.startswith(f"{prefix}:")
    keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
    return int(await r.delete(*keys)) if keys else 0


async def test_a_redis_flush_mid_run_loses_nothing(platform: PlatformFactory, sink: Sink) -> None:
    # Retries are seconds apart, so that the flush surely finds some in the schedule; each delivery's
    # downstream fails once, then succeeds.
    plat = await platform(max_retries=3, retry_base_ms=1500, retry_cap_ms=1500, stuck_after_s=600)
    url = sink.url("flaky", 1, "loss")
    accepted: list[tuple[uuid.UUID, list[str]]] = []

    async def ingest(count: int, label: str) -> None:
        for i in range(count):
            recipients = [f"{label}{i}-{j}-{secrets.token_hex(2)}" for j in range(2)]
            accepted.append((await plat.notify(user_ids=recipients, webhook_url=url), recipients))

    # A: processed once, now waiting in the retry schedule.
    await ingest(15, "a")
    await wait_for(lambda: plat.redis.zcard(plat.settings.key("retry")), 10, message="retries scheduled")
    # B: accepted while no stream worker runs, so still in the stream.
    await plat.stop_workers("stream")
    await ingest(10, "b")
    await wait_for(lambda: _stream_at_least(plat, 20), 10, message="B's entries in the stream")

    scheduled = await plat.redis.zcard(plat.settings.key("retry"))
    assert scheduled > 0 and await plat.stream_length() >= 20
    assert await lose_redis_data(plat) > 0
    # C: accepted just after the loss.
    await ingest(5, "c")
    await plat.start_stream_worker()

    async def all_done() -> bool:
        rows = await plat.db.fetch("SELECT user_id, status, webhook_status FROM deliveries")
        assert len(rows) == 2 * len(accepted)
        not_done = [dict(r) for r in rows if (r["status"], r["webhook_status"]) != ("offline", "succeeded")]
        assert not not_done, f"{len(not_done)} not done, e.g. {not_done[:3]}"
        return True

    await wait_for(all_done, 30, interval_s=0.1)
    assert await plat.redis.exists(plat.settings.key("epoch"))  # the reconciler saw the loss
    calls = sink.per_delivery("loss")
    for nid, recipients in accepted:
        for u in recipients:
            statuses = [h.status for h in calls[f"{nid}:{u}"]]
            assert statuses[:2] == [500, 200], (nid, u, statuses)  # at least once; duplicates are allowed
    assert await plat.dlq() == []
    # Every recipient finds it in the offline queue (nobody acknowledged anything).
    nid, recipients = accepted[0]
    page = (await plat.http.get(f"/notifications/offline/{recipients[0]}")).json()
    assert [n["id"] for n in page["notifications"]] == [str(nid)]


async def _stream_at_least(plat: Platform, n: int) -> bool:
    return await plat.stream_length() >= n
