"""Who records a socket hand-off (service/dispatch_log.py, service/sessions.py), on a real Redis and PostgreSQL.

The gateway node that pushed a frame writes its ``dispatched``, once ``DISPATCH_RECORD_DELAY_MS`` old, and not at
all when the client acknowledged it meanwhile; the stream worker writes ``offline`` for a user no node held.

Regression: the stream worker wrote every hand-off, and for a delivery acknowledged first the UPDATE looked the
row up to move nothing (pg_floor's "handoff (after ack)": 6-7 µs of PostgreSQL's CPU per fan-out delivery).
"""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from helpers import wait_for
from integration_support import (
    Gateways,
    SocketFactory,
    Workers,
    insert_pending,
    notify,
    offline_ids,
    settled,
    status_of,
    users,
)

from notiflow import metrics

pytestmark = pytest.mark.timeout(60)

#: Long enough for an ack to be committed (and confirmed) before the acknowledged frames come due.
DELAY_MS = 3000


def _written(status: str) -> float:
    return metrics.value("notiflow_handoffs_written_total", status=status)


async def test_the_gateway_writes_dispatched_only_for_frames_not_acknowledged_within_the_delay(
    gateways: Gateways, workers: Workers, socket: SocketFactory, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    gw = await gateways.start(dispatch_record_delay_ms=DELAY_MS)
    await workers.stream(dispatch_record_delay_ms=DELAY_MS)
    acker, silent, away = users(3)
    acking, quiet = await socket(gw, acker), await socket(gw, silent)
    dispatched_before, settled_before = _written("dispatched"), metrics.value("notiflow_handoffs_settled_total")

    ids = [await notify(http, gw.url, [acker, silent, away], payload={"i": i}) for i in range(5)]
    await acking.wait_ids(ids)
    await acking.ack(ids, ref=7)
    assert await acking.recv() == {"type": "acked", "ref": 7}  # committed: the node settles its hand-offs
    await quiet.wait_ids(ids)

    # The silent user's frames come due and are written by the gateway; the worker wrote the absent user's.
    for nid in ids:
        assert await settled(db, nid, timeout_s=DELAY_MS / 1000 + 10) == {
            acker: "delivered", silent: "dispatched", away: "offline",
        }
    # Each notification reached the node in one message for both sockets, so the acknowledged user's hand-offs
    # came due with the silent user's, in the same statements: had they not been settled, they would count here.
    await wait_for(lambda: _written("dispatched") - dispatched_before >= len(ids), timeout_s=10)
    assert _written("dispatched") - dispatched_before == len(ids), "an acknowledged frame's hand-off was written"
    assert metrics.value("notiflow_handoffs_settled_total") - settled_before == len(ids)
    assert await offline_ids(http, gw.url, silent) == ids  # dispatched, unacknowledged: still listed
    assert await offline_ids(http, gw.url, acker) == []


async def test_a_frame_a_subscription_gap_lost_is_dispatched_once_the_resync_pushes_it(
    gateways: Gateways, socket: SocketFactory, db: asyncpg.Pool
) -> None:
    # A PUBLISH that Redis counted as heard, on a subscription cut before the node read it: no worker records
    # the delivery (a node heard it), and the node never had it. The resync after the gap pushes it; that push
    # is the node's hand-off. Regression: resync pushes were not recorded, and such a delivery stayed pending
    # until the stuck-work sweep (test_resync_gap timed out waiting for its state, one run in four).
    gw = await gateways.start()  # no stream worker: only the node can record anything here
    [ada] = users(1)
    sock = await socket(gw, ada)
    nid = str(await insert_pending(db, [ada]))
    await gw.services.sessions.resync()
    await sock.wait_ids([nid])

    async def dispatched() -> bool:
        return await status_of(db, nid, ada) == "dispatched"

    await wait_for(dispatched, timeout_s=10, message=f"{nid} recorded dispatched after the resync pushed it")
