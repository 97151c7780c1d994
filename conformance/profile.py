"""Run sizes. ``default`` finishes in a few minutes on a 2-core box; ``soak`` is the long run; ``selftest`` is
what the self-tests use when they run check modules against a broken target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    online_users: int  # one socket each, open for the whole run
    multi_device_users: int  # two sockets each, on two different nodes, open for the whole run
    offline_users: int  # never connect until the final sweep
    churn_users: int  # connect and disconnect during the run
    producers: int  # concurrent ingest loops
    notifications: int  # total ingests of the mixed run
    max_recipients: int  # each ingest names 1..max_recipients users
    drain_timeout_s: float  # how long live sockets may take to receive everything at the end
    settle_s: float  # how long a scenario waits for something that must arrive
    timeout_factor: float  # multiplies every test's timeout


PROFILES: dict[str, Profile] = {
    "default": Profile(
        name="default",
        online_users=160,
        multi_device_users=40,
        offline_users=100,
        churn_users=40,
        producers=8,
        notifications=4000,
        max_recipients=4,
        drain_timeout_s=60,
        settle_s=30,
        timeout_factor=1.0,
    ),
    "soak": Profile(
        name="soak",
        online_users=400,
        multi_device_users=100,
        offline_users=300,
        churn_users=200,
        producers=16,
        notifications=60_000,
        max_recipients=6,
        drain_timeout_s=300,
        settle_s=60,
        timeout_factor=20.0,
    ),
    # The self-tests run check modules against deliberately broken targets: small, and quick to give up.
    "selftest": Profile(
        name="selftest",
        online_users=6,
        multi_device_users=3,
        offline_users=6,
        churn_users=3,
        producers=3,
        notifications=150,
        max_recipients=3,
        drain_timeout_s=5,
        settle_s=5,
        timeout_factor=1.0,
    ),
}
