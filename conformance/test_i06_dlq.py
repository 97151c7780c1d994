"""I6 DLQ bounds: a delivery that keeps failing is attempted at most MAX_RETRIES + 1 times, reaches the DLQ
exactly once, and its attempts keep to the backoff schedule; a failing downstream never sees a retry storm.

The downstream is the suite's webhook sink (an allowed host of the shared cluster, which runs with
MAX_RETRIES=2, RETRY_BASE_MS=200, RETRY_CAP_MS=1000 and a per-host retry budget of 10/s). Against a --base-url
target this is skipped.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from typing import Any

import httpx
import pytest

from conformance.client import Api, until
from conformance.cluster import MAX_RETRIES, RETRY_BASE_MS, RETRY_CAP_MS, RETRY_RATE_PER_HOST, Target
from conformance.history import History
from conformance.report import judge
from conformance.sink import Call, WebhookSink

#: Allowance on top of a backoff delay: the retry worker's poll period and the stream worker's pick-up.
SLACK_S = 1.0


def _ceiling_s(retry: int) -> float:
    """The largest backoff before retry ``retry`` (1-based): min(cap, base * 2**retry) (SPEC §4), taking the
    exponent's larger reading so that either 0- or 1-based counting passes."""
    return min(RETRY_CAP_MS, RETRY_BASE_MS * 2**retry) / 1000


def _per_delivery(calls: list[Call]) -> dict[tuple[str, str], list[Call]]:
    found: dict[tuple[str, str], list[Call]] = defaultdict(list)
    for call in calls:
        found[(str(call.body["id"]), call.body["user_id"])].append(call)
    return found


async def _dlq_by_user(api: Api, users: list[str]) -> list[dict[str, Any]]:
    return [e for u in users for e in await api.dlq(u)]


async def _fail_until_dead(
    api: Api, sink: WebhookSink, tag: str, users: list[str], count: int, timeout_s: float
) -> tuple[list[str], dict[tuple[str, str], list[Call]], list[str]]:
    """Send ``count`` notifications whose webhook always answers 500; wait until every delivery is in the DLQ
    and check the bounds every failing delivery must keep. Returns ids, sink calls and problems found."""
    sent = [
        (await api.ingest(users, event="dlq.fail", payload={"n": k}, webhook_url=sink.url("fail", tag))).id
        for k in range(count)
    ]
    assert all(sent), "ingest with a webhook_url was refused"
    ids = [str(nid) for nid in sent]
    want = {(nid, u) for nid in ids for u in users}

    async def all_dead() -> bool:
        entries = await _dlq_by_user(api.as_process("dlq-poll"), users)
        return {(str(e["notification_id"]), e["user_id"]) for e in entries} >= want

    problems: list[str] = []
    if not await until(all_dead, timeout_s, 0.25):
        problems.append(f"failing webhooks did not all reach the DLQ within {timeout_s} s")
    settled = len(sink.calls("fail", tag))
    # Nothing may follow the DLQ: watch one more full backoff window (plus slack) for a call that must not come.
    if await until(lambda: len(sink.calls("fail", tag)) > settled, RETRY_CAP_MS / 1000 + SLACK_S):
        problems.append("the downstream was called again after the delivery was dead-lettered")

    calls = _per_delivery(sink.calls("fail", tag))
    if set(calls) != want:
        problems.append(f"calls for unknown deliveries {set(calls) - want}, none for {want - set(calls)}")
    wrong = {k: len(v) for k, v in calls.items() if len(v) != MAX_RETRIES + 1}
    if wrong:
        problems.append(f"expected exactly {MAX_RETRIES + 1} attempts per delivery, got {wrong}")
    entries = await _dlq_by_user(api, users)
    per = Counter((str(e["notification_id"]), e["user_id"]) for e in entries)
    if any(n != 1 for n in per.values()):
        problems.append(f"deliveries dead-lettered more than once: {per.most_common(3)}")
    if {e["channel"] for e in entries} != {"webhook"}:
        problems.append(f"DLQ channels {sorted({e['channel'] for e in entries})}, expected only webhook")
    for nid in ids[:3]:
        status = await api.status(nid, users[0])
        delivery = status["deliveries"][0] if status else {}
        hook_attempts = [a for a in delivery.get("attempts", []) if a["channel"] == "webhook"]
        if delivery.get("webhook_status") != "dead" or len(hook_attempts) != MAX_RETRIES + 1:
            problems.append(f"{nid}: webhook_status {delivery.get('webhook_status')}, {len(hook_attempts)} attempts")
    for u in users:  # the socket channel is independent: the recipients are offline, so all wait in their queues
        await api.as_process(f"sweep-{u}").sweep(u)
    return ids, calls, problems


@pytest.mark.timeout(120)
async def test_a_failing_webhook_keeps_to_the_backoff_schedule_then_is_dead_lettered_once(
    target: Target, sink: WebhookSink, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    target.require_control("the webhook sink must be an allowed host and retries short")
    api = Api(http, target.urls[0], history, "api")
    # Few enough deliveries that the per-host retry budget never defers one: gaps must follow the backoff alone.
    users = [f"{run_id}-off-hook{i}" for i in range(3)]
    _, calls, problems = await _fail_until_dead(api, sink, run_id, users, 1, 30)
    for key, got in calls.items():
        gaps = [b.at_s - a.at_s for a, b in itertools.pairwise(got)]
        bounds = [_ceiling_s(k + 1) + SLACK_S for k in range(len(gaps))]
        if any(g < 0 or g > bound for g, bound in zip(gaps, bounds, strict=True)):
            problems.append(f"{key}: retry gaps {[round(g, 3) for g in gaps]} s, bounds {bounds} s")
    judge("I6 failing webhook", history, limit=report_limit, problems=problems)


@pytest.mark.timeout(150)
async def test_many_failing_deliveries_never_storm_the_downstream(
    target: Target, sink: WebhookSink, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    target.require_control("the webhook sink must be an allowed host and retries short")
    api = Api(http, target.urls[-1], history, "api")
    users = [f"{run_id}-off-storm{i}" for i in range(3)]
    count = 15  # 45 deliveries, 90 retries: unthrottled, the first retries alone would land within a second
    _, calls, problems = await _fail_until_dead(api, sink, run_id, users, count, 60)
    retries = sorted(c.at_s for got in calls.values() for c in got[1:])
    # The platform reserves its budget per wall-clock second, so a sliding second of arrivals may overlap two or,
    # with call latency, three budget seconds. Unthrottled, this scenario puts ~90 retries into one second.
    busiest = max((bisect.bisect_right(retries, t + 1.0) - i for i, t in enumerate(retries)), default=0)
    if busiest > 3 * RETRY_RATE_PER_HOST:
        problems.append(f"{busiest} retries within one second (budget {RETRY_RATE_PER_HOST}/s): a retry storm")
    judge("I6 no retry storm", history, limit=report_limit, problems=problems)


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
