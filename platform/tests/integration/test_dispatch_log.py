"""The socket channel's hand-off log (service/dispatch_log.py) on a real PostgreSQL: a hand-off is written
only once it is DISPATCH_RECORD_DELAY_MS old, so an acknowledgement that lands meanwhile saves the write;
an acknowledged row is never moved back; what a failed or cancelled round took is written by the next.

Regression: the log used to write everything it held once per period, so a hand-off added just before a
round was written at once, whatever the delay (in the side-by-side benchmark, 131k hand-off rows written of
188k socket deliveries; 107k with the age rule).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest
from faults import FaultyRecord
from helpers import wait_for
from integration_support import insert_pending

from notiflow.errors import StoreUnavailable
from notiflow.service.dispatch_log import WRITE_CHUNK, DispatchLog

pytestmark = pytest.mark.timeout(30)

DELAY_S = 0.4


async def status(db: asyncpg.Pool, nid: uuid.UUID, user: str) -> str:
    return str(await db.fetchval(
        "SELECT status FROM deliveries WHERE notification_id = $1 AND user_id = $2", nid, user
    ))


async def test_a_hand_off_is_written_once_it_is_the_delay_old_not_at_the_next_round(db: asyncpg.Pool) -> None:
    nid = await insert_pending(db, ["a", "b"])
    log = DispatchLog(db, DELAY_S)
    log.start()
    try:
        # Mid-period: under the old rule (write all every DELAY_S) "a" went out about 0.1 s after it came.
        await asyncio.sleep(DELAY_S * 0.75)
        added = time.monotonic()
        log.add([("a", nid)], "dispatched")
        log.add([("b", nid)], "offline")
        await wait_for(lambda: log.written == 2, 5)
        assert time.monotonic() - added >= DELAY_S
        assert (await status(db, nid, "a"), await status(db, nid, "b")) == ("dispatched", "offline")
    finally:
        await log.close(grace_s=2)


async def test_a_hand_off_acknowledged_within_the_delay_leaves_the_row_delivered(db: asyncpg.Pool) -> None:
    nid = await insert_pending(db, ["a"])
    log = DispatchLog(db, DELAY_S)
    log.add([("a", nid)], "dispatched")
    await log.flush(older_than_s=DELAY_S)
    assert log.written == 0  # too young for a round
    await db.execute("UPDATE deliveries SET status = 'delivered' WHERE notification_id = $1", nid)
    await log.close(grace_s=2)  # writes what it holds, whatever its age
    assert log.written == 1
    assert await status(db, nid, "a") == "delivered"


async def test_hand_offs_a_failed_round_could_not_write_are_written_by_the_next(db: asyncpg.Pool) -> None:
    nid = await insert_pending(db, ["a", "b"])
    pool = FaultyRecord().around(db)
    pool.down = True  # PostgreSQL away
    log = DispatchLog(pool, 0.0)
    log.add([("a", nid)], "dispatched")
    log.add([("b", nid)], "offline")
    with pytest.raises(StoreUnavailable):
        await log.flush()
    assert log.written == 0
    pool.down = False  # PostgreSQL is back
    await log.flush()
    assert log.written == 2
    assert (await status(db, nid, "a"), await status(db, nid, "b")) == ("dispatched", "offline")


class _CountingPool:
    """The real pool, counting the connections taken: one per hand-off statement."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.statements = 0

    def acquire(self) -> Any:
        self.statements += 1
        return self._pool.acquire()


async def test_a_burst_of_hand_offs_is_written_in_statements_of_at_most_write_chunk(db: asyncpg.Pool) -> None:
    # A burst comes due all at once; one statement for all of it held up the commits behind it (paced
    # p99 124-135 ms right after a blast with 5,000 per statement, 26-31 ms with 500).
    users = [f"u{i}" for i in range(1007)]
    nid = await insert_pending(db, users)
    counting = _CountingPool(db)
    log = DispatchLog(counting, 0.0)  # type: ignore[arg-type]
    log.add([(u, nid) for u in users], "offline")
    await log.flush()
    assert log.written == len(users)
    assert counting.statements == -(-len(users) // WRITE_CHUNK) >= 3, "a statement of more than 500 hand-offs"
    assert await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE notification_id = $1 AND status = 'offline'", nid
    ) == len(users)


async def test_a_settled_hand_off_is_not_written_and_the_others_are(db: asyncpg.Pool) -> None:
    # A gateway settles what its clients acknowledged: that hand-off's write would find nothing to move.
    nid = await insert_pending(db, ["a", "b"])
    log = DispatchLog(db, 0.0)
    log.add([("a", str(nid)), ("b", str(nid))], "dispatched")
    log.settle([("a", str(nid)), ("z", str(nid))])  # "z": an ack of a frame the log never held
    await log.flush()
    assert log.written == 1
    assert (await status(db, nid, "a"), await status(db, nid, "b")) == ("pending", "dispatched")
