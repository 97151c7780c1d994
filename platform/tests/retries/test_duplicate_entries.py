"""Duplicate stream entries for one delivery never call the downstream twice for one attempt (SPEC I6).

At-least-once work produces duplicates: an outbox re-enqueue racing the gateway's own XADD (under load the
outbox row can be deleted later than ``OUTBOX_GRACE_S``), a stuck-work sweep, a reclaim after a crash. Found by
``test_retry_budget.py`` on a loaded machine: 181-221 calls where 180 (60 deliveries x 3 attempts) were due,
one attempt number recorded twice. Each call now first claims its attempt in PostgreSQL.
"""

from __future__ import annotations

import secrets

import pytest
from harness import Platform, PlatformFactory
from helpers import wait_for
from sinkserver import Sink

from notiflow.models import Channel, StreamEntry
from notiflow.streams.work import WorkStream

pytestmark = pytest.mark.timeout(60)

RECIPIENTS = 20
COPIES = 3


async def test_duplicate_webhook_entries_make_one_call_per_attempt(platform: PlatformFactory, sink: Sink) -> None:
    plat = await platform(stream_workers=0, max_retries=0)  # one attempt each: a second call is a duplicate
    users = [f"d{i}-{secrets.token_hex(3)}" for i in range(RECIPIENTS)]
    nid = await plat.notify(user_ids=users, webhook_url=sink.url("dead", "dup"))
    entry = StreamEntry(nid, tuple(users), Channel.WEBHOOK)
    await WorkStream(plat.redis, plat.settings).add([entry] * COPIES)  # besides the gateway's own entry
    for _ in range(2):
        await plat.start_stream_worker()

    async def all_dead() -> bool:
        return len(await plat.dlq(nid)) == RECIPIENTS

    await wait_for(all_dead, timeout_s=30, message="every delivery dead-lettered")
    await wait_for(lambda: _drained(plat), timeout_s=10, message="every copy processed")
    calls = sink.per_delivery("dup")
    assert len(calls) == RECIPIENTS
    assert {len(hits) for hits in calls.values()} == {1}, {k: len(v) for k, v in calls.items() if len(v) != 1}
    for user in users:
        assert [a["attempt"] for a in await plat.attempts(nid, user)] == [1]


async def _drained(plat: Platform) -> bool:
    return await plat.stream_length() == 0
