"""I7 presence: after a gateway node dies (SIGKILL), its users count as offline within PRESENCE_TTL, and what
is sent to them goes to the offline queue; a user with a device on a surviving node stays online. GET
/presence/{user} follows the same bound: the dead node's sockets stop counting within PRESENCE_TTL.

Runs on a dedicated cluster (two gateways, PRESENCE_TTL_S=3) because it kills one of its nodes."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from conformance.client import Api, Socket, until
from conformance.cluster import Target
from conformance.history import History
from conformance.report import judge
from conformance.workload import bounded

TTL_S = 3.0
#: Allowance past the TTL: the stream worker's pick-up and the status read.
SLACK_S = 4.0


async def _settled_status(api: Api, nid: str, user: str, timeout_s: float = 10) -> str | None:
    """The delivery's state once it has left ``pending`` (bounded)."""
    found: list[str] = []

    async def settled() -> bool:
        data = await api.status(nid, user)
        state = data["deliveries"][0]["status"] if data and data["deliveries"] else None
        if state is not None and state != "pending":
            found.append(state)
            return True
        return False

    return found[-1] if await until(settled, timeout_s, 0.1) else None


@pytest.mark.timeout(150)
async def test_users_of_a_killed_node_go_offline_within_the_ttl(
    start_cluster: Callable[..., Target], http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    target = start_cluster(
        "it SIGKILLs a gateway", gateways=2, stream_workers=1, retry_workers=1,
        env={"NOTIFLOW_PRESENCE_TTL_S": str(TTL_S)},
    )  # fmt: skip
    try:
        await _scenario(target, http, history, run_id)
        judge("I7 presence after SIGKILL", history, limit=report_limit)
    finally:
        target.stop()


async def _presence_follows_the_ttl(api: Api, victim: str, multi: str, killed_at: float) -> None:
    """GET /presence drops the dead node's sockets within the TTL (and not much before it: the bound is
    the node key's expiry, so an answer right after the kill may still count them)."""

    async def victim_offline() -> bool:
        return (await api.presence(victim)) == {"online": False, "sockets": 0}

    assert await until(victim_offline, TTL_S + SLACK_S, 0.1), "presence still counts the dead node's socket"
    gone_after = time.monotonic() - killed_at
    assert gone_after <= TTL_S + SLACK_S, f"presence dropped the dead node only after {gone_after:.1f}s"
    assert await api.presence(multi) == {"online": True, "sockets": 1}, "the surviving node's socket stopped counting"


async def _scenario(target: Target, http: httpx.AsyncClient, history: History, run_id: str) -> None:
    assert target.stack is not None
    survivor_url, victim_url = target.urls
    victims = [f"{run_id}-victim{i}" for i in range(5)]
    survivors = [f"{run_id}-survivor{i}" for i in range(5)]
    multi = f"{run_id}-both"
    doomed = [Socket(victim_url, u, history, f"ws-{u}") for u in victims]
    doomed.append(Socket(victim_url, multi, history, f"ws-{multi}-doomed"))
    staying = [Socket(survivor_url, u, history, f"ws-{u}") for u in [*survivors, multi]]
    await bounded(8, [s.open() for s in doomed + staying])
    api = Api(http, survivor_url, history, "api")
    everyone = [*victims, *survivors, multi]

    warm = await api.ingest(everyone, event="presence.warm")
    assert all(await bounded(16, [s.wait_for_cids({warm.cid}, 10) for s in doomed + staying])), "warm-up lost"

    assert await api.presence(victims[0]) == {"online": True, "sockets": 1}
    assert await api.presence(multi) == {"online": True, "sockets": 2}
    assert await api.presence(f"{run_id}-nobody") == {"online": False, "sockets": 0}

    target.stack.kill("gateway-1")
    killed_at = time.monotonic()
    await _presence_follows_the_ttl(api, victims[0], multi, killed_at)
    assert await until(lambda: all(s.closed_by == "server" for s in doomed), 10), "sockets of the dead node stay open"

    # Probe one victim until a new notification for it settles as offline: that is when presence expired.
    offline_after: float | None = None
    for k in range(200):
        if time.monotonic() - killed_at > TTL_S + SLACK_S + 5:
            break
        probe = await api.ingest([victims[0]], event="presence.probe", payload={"k": k})
        assert probe.id is not None, f"ingest after the kill answered {probe.status}: {probe.body}"
        if await _settled_status(api.as_process("poll"), probe.id, victims[0]) == "offline":
            offline_after = time.monotonic() - killed_at
            break
    assert offline_after is not None, "the dead node's user never counted as offline"
    assert offline_after <= TTL_S + SLACK_S, f"offline only after {offline_after:.1f}s (TTL {TTL_S}s)"

    batch = [await api.ingest(everyone, event="presence.after", payload={"k": k}) for k in range(10)]
    for r in batch:
        assert r.id is not None
        for v in victims:
            state = await _settled_status(api.as_process("poll"), r.id, v)
            assert state == "offline", f"{r.id} for {v} (node dead for a while) settled as {state}"
    cids = {r.cid for r in batch}
    assert all(await bounded(8, [s.wait_for_cids(cids, 15) for s in staying])), "surviving sockets missed some"
    assert (await _settled_status(api, str(batch[0].id), multi)) != "offline", "a user online elsewhere went offline"

    await bounded(8, [s.close() for s in doomed + staying])
    for u in everyone:
        items = await api.as_process(f"sweep-{u}").sweep(u)
        if u in victims:
            assert {r.cid for r in batch} <= {i["payload"]["cid"] for i in items}, f"{u}: offline queue incomplete"
