"""Proof that the chaos suite fails where a platform loses work, naming what was lost, for the right reason.

- Redis loses its data while the stream holds unread work, and no retry worker runs (so no reconciler rebuilds
  the stream from PostgreSQL): the webhook deliveries of the lost entries stay ``pending`` for ever. The
  scenario must fail and name exactly those deliveries (the same scenario with a retry worker passes: it is
  ``test_scenario[redis-restart]``).
- A scenario run through ``conformance/selftest/proxy.py`` (a gateway proxy that hides queue entries of the
  ``-off`` users, and writes down which) must fail naming exactly what the proxy hid.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import httpx
import pytest

from chaos.cluster import ChaosCluster, ChaosTarget
from chaos.profile import Profile
from chaos.runner import run_scenario
from chaos.scenarios import BY_NAME
from conformance.selftest.proxy import FaultProxy


@pytest.fixture
def no_reconciler_cluster(chaos_target: ChaosTarget) -> Iterator[ChaosTarget]:
    if chaos_target.stack is None:
        pytest.skip("needs a cluster started by the suite (it runs one without a retry worker)")
    cluster = ChaosCluster(gateways=1, stream_workers=1, retry_workers=0)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.mark.timeout(180)
async def test_redis_data_loss_without_a_reconciler_is_reported_by_id(
    no_reconciler_cluster: ChaosTarget, chaos_http: httpx.AsyncClient, chaos_profile: Profile
) -> None:
    result = await run_scenario(BY_NAME["redis-restart"], no_reconciler_cluster, chaos_http, chaos_profile)
    lost_work = {(n, u) for n, u, channel in result.details.get("lost_work", []) if channel == "webhook"}
    assert lost_work, f"the restart found no unread webhook work to lose, so this proves nothing: {result.details}"
    assert result.status == "failed", f"the suite passed a platform that lost {len(lost_work)} webhook deliveries"
    lost = set(result.lost_keys)
    # Exactly the webhook deliveries whose stream entries the restart took, and each named with its reason.
    # (Anything else lost must be the same kind: committed, never enqueued again, its webhook never called.)
    assert lost_work <= lost, f"not reported: {sorted(lost_work - lost)[:10]}"
    assert all("webhook channel: webhook_status pending" in row for row in result.lost), result.lost[:10]
    text = "\n".join(result.lost)
    assert all(f"notification {n} user {u}:" in text for n, u in lost_work)
    assert result.counts["unexpected"] == 0


@pytest.fixture
def lossy_target(chaos_target: ChaosTarget) -> Iterator[tuple[ChaosTarget, list[FaultProxy]]]:
    proxies = [FaultProxy(url, hide_every=3, hide_users="-off").start() for url in chaos_target.urls]
    try:
        yield dataclasses.replace(chaos_target, urls=[p.url for p in proxies]), proxies
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.mark.timeout(180)
async def test_a_scenario_through_a_lossy_gateway_fails_naming_what_it_hid(
    lossy_target: tuple[ChaosTarget, list[FaultProxy]], chaos_http: httpx.AsyncClient, chaos_profile: Profile
) -> None:
    target, proxies = lossy_target
    await asyncio.to_thread(target.toxi.reset_sync)
    result = await run_scenario(BY_NAME["redis-latency"], target, chaos_http, chaos_profile)
    hidden = {pair for p in proxies for pair in p.hidden}
    assert hidden, "the proxy hid nothing, so this self-test would prove nothing"
    assert result.status == "failed", "the suite passed a gateway that hides queue entries"
    assert set(result.lost_keys) == hidden, f"reported {len(result.lost_keys)} lost, the proxy hid {len(hidden)}"
    assert all(user.split("-", 1)[1].startswith("off") for _, user in hidden)
    text = "\n".join(result.lost)
    assert all(f"notification {n} user {u}:" in text for n, u in hidden)
