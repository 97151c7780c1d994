"""Topics (docs/contract.md "Topics"): a topic notification reaches every subscriber at acceptance, live on their
sockets or in their offline queues, gapless, each once; and a topic's notifications keep acceptance order per
subscriber (I4 among them). The history records each topic send as an ingest to the topic's subscribers, so
the checker judges it like any other notification (I1-I4)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from conformance.client import Api, Socket
from conformance.cluster import Target
from conformance.history import History
from conformance.report import judge
from conformance.workload import bounded


@pytest.mark.timeout(180)
async def test_topic_notifications_reach_every_subscriber_in_order(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    urls, n = target.urls, len(target.urls)
    topic = f"{run_id}-topic"
    users = [f"{run_id}-top{i}" for i in range(12)]
    api = Api(http, urls[0], history, "subscriber")
    await bounded(8, [api.as_process(f"sub-{u}", urls[i % n]).subscribe(topic, u) for i, u in enumerate(users)])
    sockets = [Socket(urls[i % n], u, history, f"ws-{u}") for i, u in enumerate(users[:5])]
    await bounded(8, [s.open() for s in sockets])
    sent: list[str] = []

    async def producer(p: int) -> None:
        # One after another (each sent once the previous was answered), through alternating nodes.
        sender = Api(http, urls[p % n], history, f"topic-producer-{p}")
        for k in range(10):
            sender = sender.as_process(sender.process, urls[(p + k) % n])
            result = await sender.ingest(users, event="topic.t", payload={"p": p, "k": k}, topic=topic)
            assert result.outcome == "ok", f"ingest answered {result.status}: {result.body}"
            assert result.body is not None and result.body["recipients"] is None and result.body["topic"] == topic
            sent.append(str(result.id))

    await asyncio.gather(*(producer(p) for p in range(2)))
    assert all(await asyncio.gather(*(s.wait_for_ids(set(sent), 60) for s in sockets))), \
        "live subscribers did not receive every topic notification"
    await bounded(8, [s.close() for s in sockets])
    queues = {u: await api.as_process(f"sweep-{u}").sweep(u) for u in users}
    for u, items in queues.items():
        assert sorted(str(i["id"]) for i in items) == sorted(sent), f"{u}: not every topic notification, once"
    judge("topics: every subscriber, in order", history, limit=report_limit)
