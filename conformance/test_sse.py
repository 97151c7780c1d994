"""I2 and I3 for SSE clients (GET /sse/{user_id}): a stream open throughout receives every notification live,
wherever it was accepted, beside the user's sockets; a stream reopened with Last-Event-ID gets what was sent
while it was away from the offline queue, in seq order with no gap, then live ones, nothing twice; what was
acknowledged through the ack endpoint is never replayed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from conformance import client
from conformance.client import Api, Socket
from conformance.cluster import Target
from conformance.history import History
from conformance.profile import Profile
from conformance.report import judge
from conformance.sse import SseClient
from conformance.workload import bounded


@pytest.fixture(autouse=True)
def _streams_need_user_tokens() -> None:
    if client.CREDENTIAL and not client.JWT_SECRET:
        pytest.skip("SSE streams are end users' own: --jwt-secret is needed to sign their tokens")


@pytest.mark.timeout(180)
async def test_sse_streams_open_throughout_receive_everything_live(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int, profile: Profile
) -> None:
    urls, n = target.urls, len(target.urls)
    users = [f"{run_id}-sse{i}" for i in range(8)]
    both = f"{run_id}-sse-and-socket"
    streams = [SseClient(http, urls[i % n], u, history, f"sse-{u}") for i, u in enumerate([*users, both])]
    sock = Socket(urls[-1], both, history, f"ws-{both}")
    await bounded(8, [s.open() for s in streams])
    await sock.open()
    want: dict[str, set[str]] = {}

    async def producer(p: int) -> None:
        api = Api(http, urls[p % n], history, f"producer-{p}")
        for k in range(60):
            api = api.as_process(api.process, urls[(p + k) % n])
            to = [both, users[(p + k) % len(users)], users[(p * 3 + k) % len(users)]]
            result = await api.ingest(sorted(set(to)), event="sse.live", payload={"p": p, "k": k})
            assert result.outcome == "ok", f"ingest answered {result.status}: {result.body}"
            for u in set(to):
                want.setdefault(u, set()).add(result.cid)

    await asyncio.gather(*(producer(p) for p in range(3)))
    await asyncio.gather(*(s.wait_for_cids(want.get(s.user, set()), profile.settle_s) for s in streams),
                         sock.wait_for_cids(want[both], profile.settle_s))
    problems = [f"{s.conn} got {len(s.cids)} distinct of {len(want.get(s.user, ()))}"
                for s in streams if s.cids != want.get(s.user, set())]
    if sock.cids != want[both]:
        problems.append(f"the socket beside an SSE stream got {len(sock.cids)} of {len(want[both])}")
    problems += [f"{s.conn}: event id {e} is not its seq" for s in streams for e in s.events[:1]
                 if s.last_event_id is None]
    await bounded(8, [s.close() for s in streams])
    await sock.close()
    api = Api(http, urls[0], history, "sweeper")
    await bounded(8, [api.as_process(f"sweep-{u}").sweep(u) for u in [*users, both]])
    judge("I2 SSE live", history, limit=report_limit, problems=problems)


@pytest.mark.timeout(180)
async def test_sse_resumes_from_the_offline_queue_after_last_event_id(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int, profile: Profile
) -> None:
    urls = target.urls
    user = f"{run_id}-sse-resume"
    api = Api(http, urls[0], history, "api")
    stream = await SseClient(http, urls[-1], user, history, f"sse-{user}").open()
    first = {(await api.ingest([user], event="sse.before")).cid for _ in range(10)}
    problems: list[str] = []
    if not await stream.wait_for_cids(first, profile.settle_s):
        problems.append(f"received {len(stream.cids)} of 10 before the disconnect")
    await stream.close()
    seen_before = len(stream.events)
    away = [(await api.ingest([user], event="sse.away", payload={"k": k})).cid for k in range(150)]
    await stream.open(resume=True)
    live = {(await api.ingest([user], event="sse.after")).cid for _ in range(10)}
    if not await stream.wait_for_cids({*away, *live}, profile.settle_s):
        problems.append(f"after the resume: {len({*away, *live} - stream.cids)} of 160 never arrived")
    resumed = stream.events[seen_before:]
    seqs = [int(e["seq"]) for e in resumed]
    if [e["payload"]["cid"] for e in resumed[: len(away)]] != away:
        problems.append("the replay after Last-Event-ID is not the offline queue in seq order")
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True:
        problems.append(f"resumed seqs have gaps or repeats: {seqs[:20]}...")
    if len(stream.events) != len(stream.received):
        problems.append(f"{len(stream.events) - len(stream.received)} events repeated an id")

    acked = await api.ack(user, up_to_seq=seqs[-1] if seqs else 0)
    if acked.status_code != 200:
        problems.append(f"ack answered {acked.status_code}")
    await stream.close()
    again = await SseClient(http, urls[0], user, history, f"sse-{user}-fresh").open()
    tail = await api.ingest([user], event="sse.tail")
    if not await again.wait_for_cids({tail.cid}, profile.settle_s):
        problems.append("a fresh stream missed a live notification")
    if [e["payload"]["cid"] for e in again.events] != [tail.cid]:
        problems.append(f"a fresh stream replayed acknowledged notifications: {len(again.events) - 1} extra")
    await again.close()
    await api.as_process("sweeper").sweep(user)
    judge("I3 SSE resume", history, limit=report_limit, problems=problems)
