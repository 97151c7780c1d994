"""I6 DLQ bounds: a delivery that keeps failing is attempted at most MAX_RETRIES + 1 times, reaches the DLQ
exactly once, and its attempts keep to the backoff schedule; a failing downstream never sees a retry storm.

The downstream is the suite's webhook sink (an allowed host of the shared cluster, which runs with
MAX_RETRIES=2, RETRY_BASE_MS=200, RETRY_CAP_MS=1000). Against a --base-url target this is skipped.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import Any

import httpx
import pytest

from conformance.client import Api, until
from conformance.cluster import MAX_RETRIES, RETRY_CAP_MS, Target
from conformance.history import History
from conformance.report import judge
from conformance.sink import WebhookSink

#: Allowance on top of a backoff delay: the retry worker's poll period and the stream worker's pick-up.
SLACK_S = 1.5


def _per_delivery(calls: list[Any]) -> dict[tuple[str, str], list[float]]:
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for call in calls:
        times[(str(call.body["id"]), call.body["user_id"])].append(call.at_s)
    return times


async def _dlq_by_user(api: Api, users: list[str]) -> list[dict[str, Any]]:
    return [e for u in users for e in await api.dlq(u)]


@pytest.mark.timeout(120)
async def test_a_failing_webhook_is_retried_within_bounds_then_dead_lettered_once(
    target: Target, sink: WebhookSink, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    target.require_control("the webhook sink must be an allowed host and retries short")
    api = Api(http, target.urls[0], history, "api")
    users = [f"{run_id}-off-hook{i}" for i in range(3)]
    sent = [
        (await api.ingest(users, event="dlq.fail", payload={"n": k}, webhook_url=sink.url("fail", run_id))).id
        for k in range(8)
    ]
    assert all(sent), "ingest with a webhook_url was refused"
    want = {(str(nid), u) for nid in sent for u in users}

    async def all_dead() -> bool:
        entries = await _dlq_by_user(api.as_process("dlq-poll"), users)
        return {(str(e["notification_id"]), e["user_id"]) for e in entries} >= want

    assert await until(all_dead, 30, 0.25), "failing webhooks did not reach the DLQ within 30 s"
    settled = len(sink.calls("fail", run_id))
    # Nothing may follow the DLQ: watch for one more full backoff window (plus slack) that no call arrives.
    assert not await until(lambda: len(sink.calls("fail", run_id)) > settled, RETRY_CAP_MS / 1000 + SLACK_S)

    times = _per_delivery(sink.calls("fail", run_id))
    counts = Counter({k: len(v) for k, v in times.items()})
    wrong = {k: n for k, n in counts.items() if n != MAX_RETRIES + 1}
    assert set(counts) == want, f"calls for unknown deliveries: {set(counts) - want}, none for {want - set(counts)}"
    assert not wrong, f"expected exactly {MAX_RETRIES + 1} attempts per delivery, got {wrong}"
    for key, ts in times.items():
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        assert all(g <= RETRY_CAP_MS / 1000 + SLACK_S for g in gaps), f"{key}: retry gaps {gaps} exceed the cap"
        assert all(g >= 0 for g in gaps)

    entries = await _dlq_by_user(api, users)
    per = Counter((str(e["notification_id"]), e["user_id"]) for e in entries)
    assert all(n == 1 for n in per.values()), f"deliveries dead-lettered more than once: {per.most_common(3)}"
    assert {e["channel"] for e in entries} == {"webhook"}
    status = await api.status(str(sent[0]), users[0])
    assert status is not None
    delivery = status["deliveries"][0]
    hook_attempts = [a for a in delivery["attempts"] if a["channel"] == "webhook"]
    assert delivery["webhook_status"] == "dead", delivery
    assert len(hook_attempts) == MAX_RETRIES + 1, hook_attempts
    # The socket channel is independent: the recipients are offline, so everything waits in their queues.
    for u in users:
        await api.as_process(f"sweep-{u}").sweep(u)
    judge("I6 failing webhook", history, limit=report_limit)


@pytest.mark.timeout(90)
async def test_a_permanent_refusal_is_dead_lettered_at_once_and_success_is_not(
    target: Target, sink: WebhookSink, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    target.require_control("the webhook sink must be an allowed host")
    api = Api(http, target.urls[-1], history, "api")
    rejected, good = f"{run_id}-off-rej", f"{run_id}-off-good"
    bad_ids = [(await api.ingest([rejected], webhook_url=sink.url("reject", run_id))).id for _ in range(4)]
    good_ids = [(await api.ingest([good], webhook_url=sink.url("ok", run_id))).id for _ in range(4)]

    async def rejected_dead() -> bool:
        return len(await api.as_process("poll").dlq(rejected)) >= len(bad_ids)

    assert await until(rejected_dead, 20, 0.2), "a 400 from the downstream did not dead-letter"
    assert await until(lambda: len(sink.calls("ok", run_id)) >= len(good_ids), 20), "successful webhooks missing"
    assert len(sink.calls("reject", run_id)) == len(bad_ids), "a permanent 4xx was retried"
    body = sink.calls("ok", run_id)[0].body
    assert {"id", "user_id", "seq", "event", "payload"} <= set(body), body

    async def succeeded() -> bool:
        reads = [await api.as_process("poll").status(str(nid), good) for nid in good_ids]
        return all(r and r["deliveries"][0]["webhook_status"] == "succeeded" for r in reads)

    assert await until(succeeded, 20, 0.2), "webhook_status never became succeeded"
    assert await api.dlq(good) == []
    for u in (rejected, good):
        await api.as_process(f"sweep-{u}").sweep(u)
    judge("I6 permanent refusal", history, limit=report_limit)
