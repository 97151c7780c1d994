"""I3 offline correctness: an offline recipient finds every notification in its queue, in seq order, with no
gaps, also while new ones keep arriving; after an ack it never appears again; an ack never removes another
user's notification, nor one it did not name."""

from __future__ import annotations

import asyncio
import random
import uuid

import httpx
import pytest

from conformance.client import Api, Socket
from conformance.cluster import Target
from conformance.history import History
from conformance.report import judge


def _ids(items: list[dict[str, object]]) -> list[str]:
    return [str(i["id"]) for i in items]


async def _ack(api: Api, user: str, **body: object) -> int:
    resp = await api.ack(user, **body)  # type: ignore[arg-type]
    assert resp.status_code == 200, f"ack for {user} {body} answered {resp.status_code}: {resp.text}"
    return int(resp.json()["acknowledged"])


@pytest.mark.timeout(240)
async def test_offline_queue_pagination_and_acks(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    urls, n = target.urls, len(target.urls)
    users = [f"{run_id}-off{i}" for i in range(5)]
    stranger = f"{run_id}-off-stranger"
    producing = asyncio.Event()
    producing.set()

    async def producer(p: int) -> None:
        api = Api(http, urls[p % n], history, f"producer-{p}")
        rng = random.Random(p)
        for k in range(120):
            api = api.as_process(api.process, urls[(p + k) % n])
            result = await api.ingest(rng.sample(users, rng.randint(1, 3)), event="offline.t", payload={"k": k})
            assert result.outcome == "ok", f"ingest answered {result.status}: {result.body}"

    async def reader(user: str) -> int:
        # Small pages, read again and again while producers keep adding: keyset pagination under writes.
        api = Api(http, urls[-1], history, f"reader-{user}")
        passes = 0
        while producing.is_set() and passes < 200:
            await api.sweep(user, limit=7)
            passes += 1
        return passes

    readers = [asyncio.create_task(reader(u)) for u in users]
    await asyncio.gather(*(producer(p) for p in range(3)))
    producing.clear()
    assert all(p > 1 for p in await asyncio.gather(*readers)), "readers did not overlap with the producers"

    api = Api(http, urls[0], history, "api")
    # "Reconnect": a socket opens; the queue still holds everything, oldest first.
    sock = await Socket(urls[-1], users[0], history, "ws-reconnect", live=False).open()
    queues = {u: await api.as_process(f"sweep-{u}").sweep(u, limit=50) for u in users}
    await sock.close()
    problems: list[str] = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    for u, items in queues.items():
        seqs = [int(i["seq"]) for i in items]
        expect(seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{u}: queue not in seq order")

    u0, u1, u2, u3 = users[:4]
    half = _ids(queues[u0])[: len(queues[u0]) // 2]
    expect(await _ack(api, u0, ids=half) == len(half), f"{u0}: acknowledging {len(half)} listed ids")
    expect(await _ack(api, u0, ids=half) == 0, "acknowledging twice counted again")
    expect(await _ack(api, stranger, ids=_ids(queues[u1])) == 0, "a stranger's ack removed someone's notifications")
    expect(await _ack(api, u2, ids=[str(uuid.uuid4()) for _ in range(5)]) == 0, "unknown ids were acknowledged")
    mixed_ids = [_ids(queues[u2])[0], _ids(queues[u3])[0], str(uuid.uuid4())]
    expect(await _ack(api, u2, ids=mixed_ids) == 1, "only the user's own, named id may be acknowledged")
    cut = int(queues[u3][9]["seq"])
    count = await _ack(api, u3, up_to_seq=cut)
    expect(count == 10, f"{u3}: up_to_seq {cut} acknowledged {count}, but 10 were listed up to it")

    expected = {
        u0: _ids(queues[u0])[len(half) :],
        u1: _ids(queues[u1]),
        u2: _ids(queues[u2])[1:],
        u3: _ids(queues[u3])[10:],
        users[4]: _ids(queues[users[4]]),
    }
    # New arrivals after the acks must not bring acknowledged ones back.
    fresh = await api.ingest(users, event="offline.after-ack")
    for u in users:
        after = _ids(await api.as_process(f"final-{u}").sweep(u, limit=13))
        expect(after == [*expected[u], fresh.id], f"{u}: queue after acks differs from what was left")
    judge("I3 offline pagination and acks", history, limit=report_limit, problems=problems)
