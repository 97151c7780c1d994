"""I9 bounded ingestion: over the backlog bound, ingestion answers 429/503 with Retry-After; nothing accepted is
dropped, and ingestion accepts again once the backlog drains.

Runs on a dedicated cluster with NOTIFLOW_STREAM_MAX_BACKLOG=40 whose only stream worker is killed first, so
the backlog can only grow; then the worker is restarted and everything accepted must arrive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from conformance.client import Api, IngestResult, Socket, until
from conformance.cluster import Target
from conformance.history import History
from conformance.report import judge
from conformance.workload import bounded

BACKLOG = 40
MAX_ATTEMPTS = 600


@pytest.mark.timeout(180)
async def test_ingestion_is_bounded_and_loses_nothing(
    start_cluster: Callable[..., Target], http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    target = start_cluster(
        "it sets a small backlog bound and kills the stream worker", gateways=1, stream_workers=1,
        retry_workers=1, env={"NOTIFLOW_STREAM_MAX_BACKLOG": str(BACKLOG)},
    )  # fmt: skip
    try:
        await _scenario(target, http, history, run_id)
        # Its latencies measure a stopped worker, not delivery: kept out of the suite's percentiles.
        judge("I9 bounded ingestion", history, limit=report_limit, latency=False)
    finally:
        target.stop()


async def _scenario(target: Target, http: httpx.AsyncClient, history: History, run_id: str) -> None:
    stack = target.stack
    assert stack is not None
    url = target.urls[0]
    offline = [f"{run_id}-off{i}" for i in range(4)]
    live = [await Socket(url, f"{run_id}-live{i}", history, f"ws-live{i}").open() for i in range(2)]
    users = offline + [s.user for s in live]
    stack.kill("stream-worker-0")
    results: list[IngestResult] = []
    full = asyncio.Event()

    async def producer(p: int) -> None:
        api = Api(http, url, history, f"producer-{p}")
        for k in range(MAX_ATTEMPTS // 4):
            if full.is_set() and sum(r.status in (429, 503) for r in results) >= 20:
                return
            r = await api.ingest(users[k % 3 : k % 3 + 3], event="backlog.t", payload={"p": p, "k": k})
            results.append(r)
            if r.status in (429, 503):
                full.set()

    await asyncio.gather(*(producer(p) for p in range(4)))
    refused = [r for r in results if r.status in (429, 503)]
    accepted = [r for r in results if r.outcome == "ok"]
    others = [(r.status, r.body) for r in results if r.outcome != "ok" and r.status not in (429, 503)]
    assert refused, f"{len(accepted)} accepted with the only stream worker dead and a backlog bound of {BACKLOG}"
    assert not others, f"unexpected answers while over the bound: {others[:5]}"
    for r in refused:
        assert r.headers is not None and "retry-after" in r.headers, f"{r.status} without Retry-After: {r.body}"
        assert int(r.headers["retry-after"]) >= 1, r.headers["retry-after"]
        assert isinstance(r.body, dict) and "error" in r.body, r.body
    # The gateway reads the backlog every ~100 ms, so concurrent producers may overshoot a little; never a lot.
    assert BACKLOG // 2 <= len(accepted) <= BACKLOG * 5, f"{len(accepted)} accepted with a bound of {BACKLOG}"

    await asyncio.to_thread(stack.start_process, "stream-worker-0")
    api = Api(http, url, history, "after")
    after: list[IngestResult] = []

    async def accepting_again() -> bool:
        after.append(await api.ingest(offline[:1], event="backlog.after"))
        return after[-1].outcome == "ok"

    assert await until(accepting_again, 60, 0.5), f"still refusing after the worker came back: {after[-1].status}"
    got = await asyncio.gather(*(s.wait_for_cids({r.cid for r in accepted if s.user in r.user_ids}, 30) for s in live))
    assert all(got), "live sockets did not get what was accepted while the worker was down"
    await bounded(2, [s.close() for s in live])
    for u in users:
        await api.as_process(f"sweep-{u}").sweep(u)
