"""I8 routing: a user connected to node A receives what was accepted by node B; a node carries only the traffic
for its own connections (seen through each node's own frame counter on /metrics)."""

from __future__ import annotations

import asyncio
import random
import re

import httpx
import pytest

from conformance.client import Api, Socket
from conformance.cluster import Target
from conformance.history import History
from conformance.report import judge
from conformance.workload import bounded


async def _metric(http: httpx.AsyncClient, url: str, name: str) -> float | None:
    """The sum of a metric's samples on one node's /metrics, or None if it does not expose it."""
    resp = await http.get(f"{url}/metrics")
    assert resp.status_code == 200, f"{url}/metrics answered {resp.status_code}"
    found = re.findall(rf"^{name}(?:\{{[^}}]*\}})?\s+([0-9.eE+-]+)$", resp.text, re.M)
    return sum(float(v) for v in found) if found else None


@pytest.mark.timeout(180)
async def test_cross_node_delivery_and_per_node_traffic(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    target.require_nodes(2)
    node_a, node_b = target.urls[0], target.urls[1]
    on_a = [f"{run_id}-live-a{i}" for i in range(10)]
    on_b = [f"{run_id}-live-b{i}" for i in range(10)]
    sockets = [Socket(node_a, u, history, f"ws-{u}") for u in on_a]
    sockets += [Socket(node_b, u, history, f"ws-{u}") for u in on_b]
    await bounded(10, [s.open() for s in sockets])
    want: dict[str, set[str]] = {}

    async def producer(p: int) -> None:
        rng = random.Random(p)
        for k in range(60):
            # Through the node the recipients are NOT on, and now and then to both groups at once.
            group, via = (on_a, node_b) if (p + k) % 2 else (on_b, node_a)
            users = rng.sample(group, 2) + (rng.sample(on_a + on_b, 1) if k % 5 == 0 else [])
            api = Api(http, via, history, f"producer-{p}")
            result = await api.ingest(sorted(set(users)), event="route.t", payload={"p": p, "k": k})
            assert result.outcome == "ok", f"ingest via {via} answered {result.status}: {result.body}"
            for u in set(users):
                want.setdefault(u, set()).add(result.cid)

    await asyncio.gather(*(producer(p) for p in range(4)))
    arrived = await asyncio.gather(*(s.wait_for_cids(want.get(s.user, set()), 30) for s in sockets))
    missing = [s.conn for s, ok in zip(sockets, arrived, strict=True) if not ok]
    assert not missing, f"sockets missed cross-node notifications: {missing}"

    if target.controllable:
        # Nobody else uses this cluster now: each node reports exactly the sockets opened on it.
        for url, group in ((node_a, on_a), (node_b, on_b)):
            assert await _metric(http, url, "notiflow_websockets") == len(group), f"{url}: socket gauge is off"

    await bounded(10, [s.close() for s in sockets])
    api = Api(http, node_a, history, "sweeper")
    await bounded(8, [api.as_process(f"sweep-{u}").sweep(u) for u in on_a + on_b])
    judge("I8 cross-node routing", history, limit=report_limit)


@pytest.mark.timeout(120)
async def test_each_node_sends_frames_only_for_its_own_sockets(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str
) -> None:
    target.require_nodes(2)
    target.require_control("per-node counters are exact only when nobody else uses the cluster")
    node_a, node_b = target.urls[0], target.urls[1]
    users = [f"{run_id}-live-a{i}" for i in range(5)]
    sockets = await bounded(5, [Socket(node_a, u, history, f"ws-{u}").open() for u in users])
    before = {url: await _metric(http, url, "notiflow_ws_frames_sent_total") for url in (node_a, node_b)}
    api = Api(http, node_b, history, "api")
    cids = {(await api.ingest(users, event="route.count")).cid for _ in range(20)}
    assert all(await asyncio.gather(*(s.wait_for_cids(cids, 20) for s in sockets)))
    after = {url: await _metric(http, url, "notiflow_ws_frames_sent_total") for url in (node_a, node_b)}
    await bounded(5, [s.close() for s in sockets])
    assert None not in before.values() and None not in after.values(), "no notiflow_ws_frames_sent_total"
    sent_a = (after[node_a] or 0) - (before[node_a] or 0)
    sent_b = (after[node_b] or 0) - (before[node_b] or 0)
    assert sent_a == sum(s.frames for s in sockets), f"node A counted {sent_a} frames for {len(users) * 20}"
    assert sent_b == 0, f"node B, with no sockets of these users, counted {sent_b} frames"
