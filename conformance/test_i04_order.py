"""I4 order: per recipient, seq increases in acceptance order for notifications accepted one after another.

Concurrent producers each send one after another, through alternating nodes, to overlapping recipients; the
checker compares every pair where one ingest was answered before the other was sent."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from conformance.client import Api, Socket
from conformance.cluster import Target
from conformance.history import History
from conformance.report import judge
from conformance.workload import MixedRun, bounded


@pytest.mark.timeout(420)
async def test_the_mixed_run_keeps_per_user_order(mixed: MixedRun, report_limit: int) -> None:
    assert not mixed.verdict.order, f"seq order violations (seed {mixed.seed})\n{mixed.verdict.report(report_limit)}"


@pytest.mark.timeout(180)
async def test_sequential_sends_get_increasing_seqs_on_every_channel(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    urls, n = target.urls, len(target.urls)
    users = [f"{run_id}-ord{i}" for i in range(6)]
    sockets = [Socket(urls[i % n], u, history, f"ws-{u}") for i, u in enumerate(users[:3])]
    await bounded(8, [s.open() for s in sockets])
    sent: dict[int, list[tuple[str, list[str]]]] = {}

    async def producer(p: int) -> None:
        api = Api(http, urls[p % n], history, f"producer-{p}")
        rng = random.Random(p)
        sent[p] = []
        for k in range(60):
            api = api.as_process(api.process, urls[(p + k) % n])
            recipients = rng.sample(users, rng.randint(2, len(users)))
            result = await api.ingest(recipients, event="order.t", payload={"p": p, "k": k})
            assert result.outcome == "ok", f"ingest answered {result.status}: {result.body}"
            sent[p].append((str(result.id), recipients))

    await asyncio.gather(*(producer(p) for p in range(4)))
    want = {u: {cid for p in sent.values() for cid, rs in p if u in rs} for u in users}
    ids_by_sock = [s.wait_for_ids(want[s.user], 30) for s in sockets]
    assert all(await asyncio.gather(*ids_by_sock)), "live sockets did not receive everything"
    await bounded(8, [s.close() for s in sockets])
    api = Api(http, urls[0], history, "sweeper")
    queues = {u: await api.as_process(f"sweep-{u}").sweep(u) for u in users}

    # Independently of the checker: each producer's sends, per user, in strictly increasing seq.
    seq_of = {(str(i["id"]), u): int(i["seq"]) for u, items in queues.items() for i in items}
    for s in sockets:
        for nid, frame in s.received.items():
            assert seq_of[(nid, s.user)] == int(frame["seq"]), f"{nid}: socket and queue disagree on seq"
    for p, sends in sent.items():
        for u in users:
            seqs = [seq_of[(nid, u)] for nid, rs in sends if u in rs]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"producer {p}, {u}: seqs {seqs}"
    judge("I4 sequential order", history, limit=report_limit)
