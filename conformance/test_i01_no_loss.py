"""I1 no loss: every accepted notification reaches, for every recipient, delivered, the offline queue, the DLQ
or expiry; never silently absent.

The scenario is the mixed run: concurrent producers on every node, users online for the whole run (some on
two devices on two nodes), users offline, users connecting and disconnecting meanwhile; then every user's
offline queue is swept and the checker reads the whole history.
"""

from __future__ import annotations

import httpx
import pytest

from conformance.client import Api, until
from conformance.cluster import Target
from conformance.history import History
from conformance.profile import Profile
from conformance.report import judge
from conformance.workload import MixedRun


@pytest.mark.timeout(420)
async def test_every_accepted_notification_is_accounted_for(mixed: MixedRun, report_limit: int) -> None:
    v = mixed.verdict
    assert mixed.results, "the mixed run sent nothing"
    assert v.stats["accepted"] > 0, f"nothing was accepted: {[r.status for r in mixed.results[:5]]}"
    assert v.valid, f"mixed run (seed {mixed.seed}) lost or invented notifications\n{v.report(report_limit)}"
    assert v.stats["lost"] == 0


@pytest.mark.timeout(420)
async def test_every_accepted_delivery_was_observed_somewhere(mixed: MixedRun) -> None:
    # Independent of the checker: each (id, recipient) of a 202 shows up in a socket receive or a queue read.
    seen: set[tuple[str, str]] = set()
    for op in mixed.history:
        if op.type != "ok":
            continue
        if op.f == "ws_recv":
            seen.add((op.value["id"], op.value["user_id"]))
        elif op.f == "sweep":
            seen.update((i["id"], op.value["user_id"]) for i in op.value["items"])
    sweeps = sum(1 for op in mixed.history if op.f == "sweep")
    missing = [(r.id, u) for r in mixed.results if r.outcome == "ok" for u in r.user_ids if (str(r.id), u) not in seen]
    assert sweeps == sum(len(g) for g in mixed.users.values()), "not every user's offline queue was swept"
    assert not missing, f"{len(missing)} accepted deliveries never observed, e.g. {missing[:10]}"


@pytest.mark.timeout(420)
async def test_the_mixed_run_used_every_node_and_every_kind_of_user(mixed: MixedRun, target: Target) -> None:
    # Guards against a scenario that silently degenerates (and so could not fail).
    nodes = {op.value["node"] for op in mixed.history if op.f == "ingest" and op.type == "invoke"}
    assert len(nodes) == len(target.urls)
    assert mixed.verdict.stats["delivered_live"] > 0 and mixed.verdict.stats["delivered_offline"] > 0
    assert mixed.churn_sockets > 0 or not mixed.users["churn"]
    assert all(mixed.users.values())


@pytest.mark.timeout(120)
async def test_expired_notifications_leave_the_queue_and_are_accounted_as_expired(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int, profile: Profile
) -> None:
    api = Api(http, target.urls[0], history, "api")
    user = f"{run_id}-ttl"  # not "-off": the self-tests' proxy hides queue entries of "-off" users
    short = [await api.ingest([user], event="ttl.short", ttl_seconds=1) for _ in range(5)]
    kept = [await api.ingest([user], event="ttl.none") for _ in range(5)]
    assert all(r.outcome == "ok" for r in short + kept), [r.status for r in short + kept]
    kept_ids = {str(r.id) for r in kept}

    async def only_unexpiring_left() -> bool:
        return {str(i["id"]) for i in await api.as_process("poll").sweep(user)} == kept_ids

    async def all_expired() -> bool:
        reads = [await api.as_process("poll").status(str(r.id), user) for r in short]
        return all(d and d["deliveries"][0]["status"] == "expired" for d in reads)

    problems = []
    if not await until(only_unexpiring_left, 10 + profile.settle_s, 0.25):
        problems.append("notifications past their TTL are still in the offline queue")
    if not await until(all_expired, 10 + profile.settle_s, 0.25):
        problems.append("notifications past their TTL never reached the state expired")
    await api.sweep(user)
    judge("I1 TTL expiry", history, limit=report_limit, problems=problems)
