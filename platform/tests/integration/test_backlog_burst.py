"""The backlog bound holds for a concurrent burst, not only for requests one after another.

The gateway used to compare the bound with a stream length refreshed every 100 ms, so a burst admitted
everything that arrived within one refresh period (conformance I9 saw 48-91 accepted over a bound of 40).
It now counts what it admitted itself at once: on a single node the bound is exact.
"""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from faults import Faulty
from integration_support import Gateways, post, table_counts, users

from notiflow.service.ports import Wrappers

pytestmark = pytest.mark.timeout(60)

BOUND = 20
BURST = 200


async def test_a_concurrent_burst_is_admitted_up_to_the_bound_exactly(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start(stream_max_backlog=BOUND)  # and no stream worker: nothing drains
    recipients = users(BURST)
    responses = await asyncio.gather(*(
        post(http, gw.url, {"user_id": u, "event": "burst", "payload": {}}, expect=None) for u in recipients
    ))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {202, 429}, codes
    assert codes.count(202) == BOUND, f"{codes.count(202)} accepted over a bound of {BOUND}"
    assert (await table_counts(db))["notifications"] == BOUND  # a 429 stores nothing
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)


async def test_entries_on_their_way_into_the_stream_count_towards_the_bound(
    gateways: Gateways, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # The flake above, made deterministic: the enqueuer stopped counting a batch before its XADD had
    # answered, so requests arriving during that round trip were admitted over a full bound.
    # The gateway's work log around the real one: XADD waits for ``release``, so the test can look at the
    # backlog while committed entries are on their way into the stream.
    work = Faulty()
    release = work.hold("add")
    gw = await gateways.start(stream_max_backlog=BOUND, wrappers=Wrappers(work=work.around))
    try:
        first = [await post(http, gw.url, {"user_id": u, "event": "held", "payload": {}}) for u in users(BOUND)]
        await asyncio.wait_for(work.waiting["add"].wait(), timeout=10)
        later = [
            await post(http, gw.url, {"user_id": u, "event": "held", "payload": {}}, expect=None)
            for u in users(5)
        ]
        assert [r.status_code for r in later] == [429] * 5, "admitted over the bound while XADD was in flight"
    finally:
        release.set()
    assert len(first) == BOUND
    assert (await table_counts(db))["notifications"] == BOUND
