"""Group commit with a gathering time (socket acks, WS_ACK_GATHER_MS): items that arrive while the oldest waits go
in one flush; a full batch or a shutdown does not wait; without it an item is flushed at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import RecordingRecord, StubWorkLog

from notiflow.batching import Batcher, BatcherClosed
from notiflow.config import Settings
from notiflow.roles import gateway
from notiflow.service.queries import QueryService

pytestmark = pytest.mark.timeout(20)


def recording() -> tuple[list[list[int]], Batcher[int, int], Batcher[int, int]]:
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> list[int | BaseException]:
        flushed.append(list(items))
        return items

    # A long gathering time: the test never waits for it to pass unless it says so.
    gathering: Batcher[int, int] = Batcher(flush, max_batch=4, name="gathering", gather_s=60)
    at_once: Batcher[int, int] = Batcher(flush, max_batch=4, name="at-once")
    return flushed, gathering, at_once


async def test_items_arriving_while_the_oldest_waits_go_in_one_flush() -> None:
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> list[int | BaseException]:
        flushed.append(list(items))
        return items

    batcher: Batcher[int, int] = Batcher(flush, max_batch=100, name="gathering", gather_s=0.5)
    batcher.start()
    first = batcher.enqueue([1])
    for i in range(2, 5):
        await asyncio.sleep(0.01)  # paced arrivals, well inside the gathering time
        batcher.enqueue([i])
    assert await first == [1]
    await batcher.close(5)
    assert flushed == [[1, 2, 3, 4]]


async def test_without_a_gathering_time_the_first_item_is_flushed_at_once() -> None:
    flushed, _, at_once = recording()
    at_once.start()
    assert await at_once.enqueue([1]) == [1]
    at_once.enqueue([2])
    await at_once.close(5)
    assert flushed == [[1], [2]]


async def test_a_full_batch_does_not_wait_for_the_gathering_time() -> None:
    flushed, gathering, _ = recording()
    gathering.start()
    assert await gathering.enqueue([1, 2, 3, 4]) == [1, 2, 3, 4]
    first = gathering.enqueue([5])
    await asyncio.sleep(0.05)  # the flush task gathers now
    gathering.enqueue([6, 7, 8])  # fills the batch: it goes
    assert await first == [5]
    await gathering.close(5)
    assert flushed == [[1, 2, 3, 4], [5, 6, 7, 8]]


async def test_closing_flushes_what_gathers_without_waiting_for_the_gathering_time() -> None:
    flushed, gathering, _ = recording()
    gathering.start()
    pending = gathering.enqueue([1, 2])
    await asyncio.sleep(0)  # the flush task is gathering now
    await asyncio.wait_for(gathering.close(30), timeout=10)
    assert await pending == [1, 2]
    assert flushed == [[1, 2]]


class _AckRecord(RecordingRecord):
    """Keeps the statements; the connection answers the ack statement's count, as PostgreSQL does."""

    def __init__(self) -> None:
        super().__init__()

    def acquire(self, *, timeout: float | None = None) -> Any:
        outer = super().acquire(timeout=timeout)

        class _Tagged:
            async def __aenter__(self) -> Any:
                conn = await outer.__aenter__()

                async def fetchval(sql: str, *args: Any) -> int:
                    await conn._keep("fetchval", sql, args)
                    return len(args[1].split(","))  # the statement's count of acknowledged deliveries

                conn.fetchval = fetchval
                return conn

            async def __aexit__(self, *exc: object) -> None:
                await outer.__aexit__(*exc)

        return _Tagged()


@pytest.mark.parametrize(("gather_ms", "statements"), [(1000, 1), (0, 2)])
async def test_socket_acks_of_two_sockets_gather_in_one_statement(gather_ms: int, statements: int) -> None:
    settings = Settings(redis_url="redis://unused", database_url="postgresql://unused", node_id="unit",
                        ws_ack_gather_ms=gather_ms)
    record = _AckRecord()
    queries = QueryService(settings=gateway(settings), pool=record, work=StubWorkLog())  # type: ignore[arg-type]
    queries.start()
    loop = asyncio.get_running_loop()
    first: asyncio.Future[object] = loop.create_future()
    second: asyncio.Future[object] = loop.create_future()
    queries.ack_from_socket("alice", ["00000000-0000-0000-0000-000000000001"], first.set_result)
    await asyncio.sleep(0.05)  # the second socket's ack comes a little later
    queries.ack_from_socket("bob", ["00000000-0000-0000-0000-000000000002"], second.set_result)
    assert await first == [1] and await second == [1]
    await queries.close(5)
    assert len(record.statements) == statements


async def test_a_callback_hears_its_groups_results_or_the_exception_that_failed_the_flush() -> None:
    fail = False

    async def flush(items: list[int]) -> list[int | BaseException]:
        if fail:
            raise RuntimeError("commit failed")
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_batch=100, name="callbacks", gather_s=60)
    heard: list[object] = []
    batcher.add([1, 2], heard.append)
    batcher.add([3], heard.append)
    batcher.start()
    await batcher.close(5)  # closing flushes at once
    assert heard == [[10, 20], [30]]

    fail = True
    failing: Batcher[int, int] = Batcher(flush, max_batch=100, name="failing")
    failing.start()
    failing.add([4], heard.append)
    await failing.close(5)
    assert isinstance(heard[-1], RuntimeError) and len(heard) == 3


async def test_a_callback_that_raises_does_not_stop_later_flushes() -> None:
    flushed, _, at_once = recording()
    called = asyncio.Event()

    def broken(outcome: object) -> None:
        called.set()
        raise ValueError("a bug in one caller")

    at_once.start()
    at_once.add([1], broken)
    await asyncio.wait_for(called.wait(), timeout=5)
    assert await at_once.enqueue([2]) == [2]  # the flush task survived the callback
    await at_once.close(5)
    assert flushed == [[1], [2]]


async def test_groups_still_queued_when_a_slow_flush_is_cancelled_hear_that_the_batcher_closed() -> None:
    stuck = asyncio.Event()

    async def flush(items: list[int]) -> list[int | BaseException]:
        await stuck.wait()  # a commit that never finishes
        return items

    batcher: Batcher[int, int] = Batcher(flush, max_batch=1, name="stuck")
    heard: list[object] = []
    batcher.start()
    batcher.add([1], heard.append)
    batcher.add([2], heard.append)  # max_batch 1: [1] is flushed alone, [2] waits behind it
    await batcher.close(0.05)
    assert len(heard) == 1 and isinstance(heard[0], BatcherClosed)
    with pytest.raises(BatcherClosed):
        batcher.add([3], heard.append)
