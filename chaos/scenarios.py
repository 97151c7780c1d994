"""The scenarios: one per row of SPEC §6, plus the issue's two offline-queue scenarios (a user offline, 50
notifications, then PostgreSQL cut on the workers' path, or Redis 20 s slow on it; after heal the queue lists
all 50). ``SCENARIOS`` is ordered as SPEC §6 lists the faults."""

from __future__ import annotations

from chaos.cluster import POSTGRES_PATHS, REDIS_PATHS
from chaos.nemesis import (
    HalfOpenClient,
    Kill,
    KillRetryWorkerMidMove,
    KillStreamWorkerHoldingEntries,
    Nemesis,
    Outage,
    Poison,
    RedisRestart,
    SlowClient,
    Toxic,
    WebhookDownstream,
)
from chaos.runner import Ctx, Scenario
from conformance.client import Api

OFFLINE_BATCH = 50


def _gateway_kill(c: Ctx) -> Nemesis:
    stack = c.target.require_stack("it SIGKILLs a gateway node")
    return Kill(c.target, f"gateway-{len(stack.gateway_urls) - 1}")  # not the probe's node (the first)


def _half_open(c: Ctx) -> Nemesis:
    user = f"{c.run_id}-halfopen"
    c.workload.extra_users.append(user)
    nemesis = HalfOpenClient(c.target.urls[-1], user, c.history)
    c.extras["halfopen"] = nemesis
    return nemesis


def _slow(c: Ctx) -> Nemesis:
    user = f"{c.run_id}-slow"
    c.workload.extra_users.append(user)
    api = Api(c.http, c.target.urls[-1], c.history, "slow-burst")
    return SlowClient(c.target.urls[-1], user, c.history, api)


async def _half_open_closed(c: Ctx) -> list[str]:
    if c.extras["halfopen"].details.get("closed_by_server"):
        return []
    return ["the gateway did not close the half-open socket during the fault (its pings went unanswered)"]


async def _send_offline_batch(c: Ctx) -> None:
    """With the fault in: 50 notifications to a user who is offline the whole time."""
    user = f"{c.run_id}-off50"
    c.workload.extra_users.append(user)
    api = Api(c.http, c.target.urls[0], c.history, "off50")
    results = [await api.ingest([user], event="chaos.off50", payload={"k": k}) for k in range(OFFLINE_BATCH)]
    c.extras["off50"] = (user, [str(r.id) for r in results if r.id is not None], len(results))


async def _offline_batch_listed(c: Ctx) -> list[str]:
    user, ids, sent = c.extras["off50"]
    problems = []
    if len(ids) != sent:
        problems.append(f"only {len(ids)} of {sent} notifications to {user} were accepted during the fault")
    listed = {str(i["id"]) for i in await Api(c.http, c.target.urls[0], c.history, "off50-check").sweep(user)}
    missing = [nid for nid in ids if nid not in listed]
    if missing:
        problems.append(f"after heal the offline queue of {user} lists {len(ids) - len(missing)} of {len(ids)};"
                        f" missing {missing[:10]}")  # fmt: skip
    return problems


SCENARIOS: list[Scenario] = [
    Scenario("redis-latency", "Redis latency",
             lambda c: Toxic(c.target, REDIS_PATHS, "latency", {"latency": 300, "jitter": 100})),
    Scenario("redis-bandwidth", "Redis bandwidth limit",
             lambda c: Toxic(c.target, REDIS_PATHS, "bandwidth", {"rate": 16})),
    Scenario("redis-reset", "Redis reset",
             lambda c: Toxic(c.target, REDIS_PATHS, "reset_peer", {"timeout": 500})),
    Scenario("redis-outage-workers", "Redis outage (workers' path)",
             lambda c: Outage(c.target, ("workers_redis",))),
    Scenario("redis-outage-gateway", "Redis outage (gateways' path)",
             lambda c: Outage(c.target, ("gateway_redis",))),
    Scenario("pg-reset", "PostgreSQL reset mid-transaction",
             lambda c: Toxic(c.target, POSTGRES_PATHS, "reset_peer", {"timeout": 300})),
    Scenario("pg-outage", "PostgreSQL outage mid-transaction",
             lambda c: Outage(c.target, POSTGRES_PATHS)),
    Scenario("kill-stream-worker", "SIGKILL of a stream worker between read and ack",
             lambda c: KillStreamWorkerHoldingEntries(c.target, "stream-worker-0")),
    Scenario("kill-gateway", "SIGKILL of a gateway node", _gateway_kill, min_nodes=2),
    Scenario("kill-retry-worker", "SIGKILL of a retry worker mid-move",
             lambda c: KillRetryWorkerMidMove(c.target, "retry-worker-0"), baseline_sink="flaky"),
    Scenario("redis-restart", "Redis restart losing its data", lambda c: RedisRestart(c.target)),
    Scenario("half-open-client", "a half-open client", _half_open, isolated=True,
             fault_s=lambda p: max(p.fault_s, 7.0), check=_half_open_closed),
    Scenario("slow-client", "a slow client", _slow, isolated=True),
    Scenario("webhook-dead", "a permanently failing webhook downstream",
             lambda c: WebhookDownstream(c.target, c.run_id, "fail"), isolated=True),
    Scenario("webhook-flaky", "a flaky webhook downstream",
             lambda c: WebhookDownstream(c.target, c.run_id, "flaky"), isolated=True),
    Scenario("webhook-slow", "a slow webhook downstream",
             lambda c: WebhookDownstream(c.target, c.run_id, "slow"), isolated=True),
    Scenario("poison", "poison entries in the stream", lambda c: Poison(c.target)),
    Scenario("offline-pg-cut", "user offline, 50 notifications, PostgreSQL (workers' path) cut",
             lambda c: Outage(c.target, ("workers_postgres",)), fault_s=lambda p: p.pg_cut_s,
             during=_send_offline_batch, check=_offline_batch_listed),
    Scenario("offline-redis-latency", "user offline, 50 notifications, Redis (workers' path) 20 s latency",
             lambda c: Toxic(c.target, ("workers_redis",), "latency", {"latency": c.profile.redis_latency_ms}),
             fault_s=lambda p: p.redis_latency_s, during=_send_offline_batch, check=_offline_batch_listed),
]  # fmt: skip

BY_NAME = {s.name: s for s in SCENARIOS}
#: Scenarios that kill processes or touch the stores directly: skipped against a --base-url deployment.
NEEDS_STACK = {"kill-stream-worker", "kill-gateway", "kill-retry-worker", "redis-restart", "poison"}
