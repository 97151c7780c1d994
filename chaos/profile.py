"""Run sizes. ``quick`` is what ``make test`` runs (every scenario in a few seconds of fault); ``long(duration)``
is what ``python -m chaos run --duration S`` runs, with the issue's full fault lengths for the two offline-queue
scenarios (PostgreSQL cut for 180 s, Redis latency 20 s for 60 s)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from chaos.workload import Mix


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    warm_s: float  # workload before the fault
    fault_s: float  # how long a fault lasts (a scenario may ask for more)
    post_s: float  # workload after recovery, before the drain
    recover_bound_s: float  # the probe must be healthy again within this after heal
    drain_s: float  # how long live sockets and webhooks may take to finish once the producers stopped
    p99_fault_bound_ms: float  # p99 end-to-end latency during a fault that must not touch other users
    pg_cut_s: float  # the offline-queue scenario's PostgreSQL (workers path) cut
    redis_latency_ms: int  # the offline-queue scenario's Redis (workers path) latency ...
    redis_latency_s: float  # ... and how long it lasts
    mix: Mix = field(default_factory=Mix)


QUICK = Profile(
    name="quick",
    warm_s=1.5,
    fault_s=4.0,
    post_s=0.5,
    recover_bound_s=30.0,
    drain_s=10.0,
    p99_fault_bound_ms=5000.0,
    # RECLAIM_IDLE_MS=1000 and RECLAIM_INTERVAL_S=0.5 claim a stuck entry about once a second: 10 s reaches
    # POISON_MAX_DELIVERIES=3 several times over, so an outage counted as poison would show.
    pg_cut_s=10.0,
    # Longer than the Redis client's 15 s socket timeout: every reply is late enough to fail.
    redis_latency_ms=16_000,
    redis_latency_s=18.0,
    mix=Mix(),
)


def long(duration_s: float) -> Profile:
    """About ``duration_s`` per scenario: a fifth before the fault, two fifths of fault, the rest after."""
    return replace(
        QUICK,
        name=f"long-{duration_s:g}s",
        warm_s=duration_s * 0.2,
        fault_s=duration_s * 0.4,
        post_s=duration_s * 0.2,
        recover_bound_s=60.0,
        drain_s=120.0,
        pg_cut_s=180.0,
        redis_latency_ms=20_000,
        redis_latency_s=60.0,
        mix=Mix(live=12, multi=4, offline=12, churn=6, producers=6, rate_per_s=40.0, max_recipients=4),
    )
