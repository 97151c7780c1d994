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
from integration_support import Gateways, post, table_counts, users

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
