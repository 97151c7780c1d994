"""I2 at-least-once live: a recipient connected throughout receives each notification over the socket at least
once; after de-duplication by id, exactly once. Every device of a user gets it, whatever node it is on."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from conformance.client import Api, Socket, until
from conformance.cluster import Target
from conformance.history import History
from conformance.profile import Profile
from conformance.report import judge
from conformance.workload import MixedRun, bounded

FRAME_FIELDS = {"type", "id", "seq", "event", "payload", "created_at"}


@pytest.mark.timeout(420)
async def test_sockets_open_throughout_the_mixed_run_received_everything(mixed: MixedRun, report_limit: int) -> None:
    v = mixed.verdict
    assert not mixed.server_closes, f"the server closed live sockets during the run: {mixed.server_closes[:10]}"
    assert not v.missed_live, f"live sockets missed notifications (seed {mixed.seed})\n{v.report(report_limit)}"
    assert mixed.drained, "some live socket did not receive everything within the drain timeout"
    for sock in mixed.live:
        expected = {r.cid for r in mixed.results if r.outcome == "ok" and sock.user in r.user_ids}
        assert sock.cids == expected, f"{sock.conn}: got {len(sock.cids)} distinct, expected {len(expected)}"


@pytest.mark.timeout(180)
async def test_every_device_on_every_node_gets_each_notification_exactly_once_after_dedup(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int, profile: Profile
) -> None:
    urls, n = target.urls, len(target.urls)
    multi = f"{run_id}-live-multi"
    others = [f"{run_id}-live{i}" for i in range(20)]
    devices = [Socket(urls[i % n], multi, history, f"{multi}-dev{i}") for i in range(3)]
    sockets = devices + [Socket(urls[(i + 1) % n], u, history, f"ws-{u}") for i, u in enumerate(others)]
    await bounded(16, [s.open() for s in sockets])
    want: dict[str, set[str]] = {}

    async def producer(p: int) -> None:
        api = Api(http, urls[p % n], history, f"producer-{p}")
        rng = random.Random(p)
        for k in range(100):
            api = api.as_process(api.process, urls[(p + k) % n])
            users = [multi, *rng.sample(others, rng.randint(0, 3))]
            result = await api.ingest(users, event="live.multi", payload={"p": p, "k": k})
            assert result.outcome == "ok", f"ingest answered {result.status}: {result.body}"
            for u in users:
                want.setdefault(u, set()).add(result.cid)

    await asyncio.gather(*(producer(p) for p in range(4)))
    await asyncio.gather(*(s.wait_for_cids(want.get(s.user, set()), profile.settle_s) for s in sockets))
    problems = []
    for sock in sockets:
        frames = list(sock.received.values())
        if frames and not set(frames[0]) >= FRAME_FIELDS:
            problems.append(f"{sock.conn}: frame lacks {FRAME_FIELDS - set(frames[0])}: {frames[0]}")
        if sock.cids != want.get(sock.user, set()):
            problems.append(f"{sock.conn} got {len(sock.cids)} distinct of {len(want.get(sock.user, ()))}")
    await bounded(16, [s.close() for s in sockets])
    api = Api(http, urls[0], history, "sweeper")
    await bounded(8, [api.as_process(f"sweep-{u}").sweep(u) for u in [multi, *others]])
    judge("I2 multi-device", history, limit=report_limit, problems=problems)


@pytest.mark.timeout(120)
async def test_an_ack_over_the_socket_delivers_and_empties_the_queue(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int, profile: Profile
) -> None:
    user = f"{run_id}-live-acker"
    sock = await Socket(target.urls[-1], user, history, "ws-acker").open()
    api = Api(http, target.urls[0], history, "api")
    cids = {(await api.ingest([user], event="live.ack")).cid for _ in range(20)}
    problems = []
    if not await sock.wait_for_cids(cids, profile.settle_s):
        problems.append(f"received {len(sock.cids)} of 20 over the socket")
    # Received but not yet acknowledged: still in the offline queue ("whether it was pushed live or not").
    if {i["payload"]["cid"] for i in await api.sweep(user)} != cids:
        problems.append("the offline queue does not hold every unacknowledged notification")
    await sock.ack(list(sock.received))
    left: set[str] = set()

    async def only_unacked_left() -> bool:
        left.clear()
        left.update(i["payload"]["cid"] for i in await api.sweep(user))
        return left == cids - sock.cids

    if not await until(only_unacked_left, profile.settle_s, 0.2):
        problems.append(f"acknowledged over the socket, still in the offline queue: {sorted(left & sock.cids)}")
    if sock.received:
        nid = next(iter(sock.received))
        status = await api.status(nid, user)
        if status is None or status["deliveries"][0]["status"] != "delivered":
            problems.append(f"{nid} acknowledged over the socket is not delivered: {status}")
    await sock.close()
    judge("I2 ack over socket", history, limit=report_limit, problems=problems)
