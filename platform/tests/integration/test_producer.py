"""The producer SDK against live gateways: a gateway SIGKILLed (DevStack) while sends and a send_many are in
flight to it, and answers lost after their commit (a proxy that cuts the connection once the answer comes);
every notification is accepted exactly once (the retries carry the same idempotency keys)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from integration_support import Gateways, offline_page, users

from notiflow.client import Producer, RetryPolicy, SyncProducer, notification
from notiflow.devstack import DevStack

pytestmark = pytest.mark.timeout(150)

StackFactory = Callable[..., DevStack]
SENDS = 300
MANY = 500
POLICY = RetryPolicy(base_ms=50, cap_ms=1000, deadline_s=60)


async def _queue(http: httpx.AsyncClient, base: str, user: str) -> list[tuple[str, int]]:
    """(kind, i) of every notification in ``user``'s offline queue."""
    found: list[tuple[str, int]] = []
    after = 0
    while True:
        page = await offline_page(http, base, user, limit=1000, after_seq=after)
        found += [(n["payload"]["kind"], n["payload"]["i"]) for n in page["notifications"]]
        if page["next_after_seq"] is None:
            return found
        after = page["next_after_seq"]


class AnswerEater:
    """A TCP proxy in front of a gateway that forwards every request and cuts the connection instead of
    passing on every ``every``-th answer (a read of the gateway's side; the answers here are small): the
    request was processed (committed), the client never learns it."""

    def __init__(self, upstream_port: int, every: int) -> None:
        self.upstream_port, self.every, self.answers, self.eaten = upstream_port, every, 0, 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            while data := await src.read(65536):
                if answers:
                    self.answers += 1
                    if self.answers % self.every == 0:
                        self.eaten += 1
                        break  # the answer is lost with the connection
                dst.write(data)
                await dst.drain()

        try:
            await asyncio.wait([asyncio.create_task(pipe(client_r, up_w, False)),
                                asyncio.create_task(pipe(up_r, client_w, True))],
                               return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        finally:
            for w in (client_w, up_w):
                w.close()


async def test_answers_lost_after_the_commit_are_retried_into_no_duplicate(
    gateways: Gateways, http: httpx.AsyncClient
) -> None:
    gw = await gateways.start()
    eater = AnswerEater(gw.settings.port, every=3)
    url = await eater.start()
    (user,) = users(1, "eaten")
    async with Producer(url, retry=POLICY) as producer:
        for i in range(30):
            await producer.send(user, "producer.test", {"kind": "send", "i": i})
        await producer.send_many([notification(user, "producer.test", {"kind": "many", "i": i}) for i in range(30)])
    assert eater.eaten >= 5, "no answer was lost: the test proved nothing"
    seen = Counter(await _queue(http, gw.url, user))
    assert set(seen) == {(k, i) for k in ("send", "many") for i in range(30)}
    assert max(seen.values()) == 1, f"accepted more than once: {[k for k, n in seen.items() if n > 1]}"


async def test_a_gateway_killed_mid_send_costs_no_duplicate_and_no_loss(
    stack: StackFactory, http: httpx.AsyncClient
) -> None:
    dev = await asyncio.to_thread(stack, gateways=2, stream_workers=1, retry_workers=1)
    doomed, survivor = dev.gateway_urls
    people = users(10, "producer")
    accepted: list[int] = []
    quarter = asyncio.Event()  # the kill must land while sends are in flight
    gate = asyncio.Semaphore(20)

    async with Producer([doomed, survivor], retry=POLICY) as producer:

        async def one(i: int) -> None:
            async with gate:
                await producer.send(people[i % 10], "producer.test", {"kind": "send", "i": i})
                accepted.append(i)
                if len(accepted) >= SENDS // 4:
                    quarter.set()

        def many() -> int:
            with SyncProducer([doomed, survivor], retry=POLICY, batch_size=50) as sync:
                items = [notification(people[i % 10], "producer.test", {"kind": "many", "i": i}) for i in range(MANY)]
                results = sync.send_many(items)
                assert all(isinstance(r, dict) for r in results), results
                return sync.attempts

        sends = [asyncio.create_task(one(i)) for i in range(SENDS)]
        batches = asyncio.create_task(asyncio.to_thread(many))
        await asyncio.wait_for(quarter.wait(), timeout=30)
        await asyncio.to_thread(dev.kill, "gateway-0")
        await asyncio.gather(*sends)
        many_attempts = await batches
        retried = producer.attempts - SENDS

    assert len(accepted) == SENDS
    assert retried > 0, "no send was in flight when the gateway died: the test proved nothing"
    seen = Counter([item for u in people for item in await _queue(http, survivor, u)])
    expected = {("send", i) for i in range(SENDS)} | {("many", i) for i in range(MANY)}
    assert set(seen) == expected, f"lost: {sorted(expected - set(seen))[:10]}"
    duplicated = {k: n for k, n in seen.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} accepted more than once: {list(duplicated.items())[:10]}"
    print(f"{SENDS} sends ({retried} retries), {MANY} in batches ({many_attempts} requests), 0 lost, 0 duplicated")
