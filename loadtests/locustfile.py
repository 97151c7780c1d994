"""Locust scenario: producers POST notifications; offline clients read their queue and acknowledge it.

    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 15s --host http://127.0.0.1:8000

Each simulated user is a service that POSTs notifications (weight 5) to users of a pool, and now and then
plays one of those users coming back online: GET /notifications/offline/{user} and ack what it read up to
the last seq (weight 1). Acknowledged notifications must never come back: a page that still holds a seq
at or below an ack this Locust user made is reported as a failure ("acked notification returned").

Knobs (environment): NOTIFLOW_LOCUST_USERS (recipient pool, 500), NOTIFLOW_LOCUST_RECIPIENTS (per POST, 1).
Only loopback hosts are accepted: the test refuses to start against anything else.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit

from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.exception import StopUser

POOL = int(os.environ.get("NOTIFLOW_LOCUST_USERS", "500"))
RECIPIENTS = int(os.environ.get("NOTIFLOW_LOCUST_RECIPIENTS", "1"))
JSON = {"Content-Type": "application/json"}
_IDS = itertools.count()


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    name = urlsplit(host).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@events.test_start.add_listener
def _only_loopback(environment: Environment, **_: Any) -> None:
    if not _is_loopback(environment.host):
        raise SystemExit(f"--host must be a loopback address (127.0.0.1, localhost, [::1]), got {environment.host!r}")


class NotiflowUser(HttpUser):
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        if not _is_loopback(self.host):
            raise StopUser()
        # Each Locust user acks only "its own" recipients, so two Locust users never race on one queue.
        me = f"lc{os.getpid()}-{next(_IDS)}"
        self.own = [f"{me}-{i}" for i in range(5)]
        self.acked: dict[str, int] = {}

    def _recipients(self) -> list[str]:
        shared = random.sample(range(POOL), min(RECIPIENTS, POOL))
        users = [f"lcu{i}" for i in shared]
        # Every tenth POST also goes to one of our own users, so their offline queues fill up.
        if random.random() < 0.1:
            users[0] = random.choice(self.own)
        return users

    @task(5)
    def post_notification(self) -> None:
        body = {"user_ids": self._recipients(), "event": "locust.tick", "payload": {"sent": time.time()}}
        with self.client.post(
            "/notifications", json=body, headers=JSON, name="POST /notifications", catch_response=True
        ) as resp:
            if resp.status_code == 202:
                resp.success()
            elif resp.status_code in (429, 503):
                resp.failure(f"backpressure {resp.status_code} (Retry-After {resp.headers.get('retry-after')})")
            else:
                resp.failure(f"unexpected {resp.status_code}: {resp.text[:200]}")

    @task(1)
    def read_offline_and_ack(self) -> None:
        user = random.choice(self.own)
        with self.client.get(
            f"/notifications/offline/{user}", params={"limit": 100}, name="GET /notifications/offline/[user]",
            catch_response=True,
        ) as resp:  # fmt: skip
            if resp.status_code != 200:
                resp.failure(f"unexpected {resp.status_code}")
                return
            page = resp.json()
            seqs = [n["seq"] for n in page.get("notifications", [])]
            if seqs != sorted(seqs):
                resp.failure(f"offline queue out of seq order: {seqs[:10]}")
                return
            if seqs and seqs[0] <= self.acked.get(user, 0):
                resp.failure(f"acked notification returned: seq {seqs[0]} <= acked {self.acked[user]}")
                return
            resp.success()
        if not seqs:
            return
        with self.client.post(
            f"/notifications/offline/{user}/ack", json={"up_to_seq": seqs[-1]}, headers=JSON,
            name="POST /notifications/offline/[user]/ack", catch_response=True,
        ) as resp:  # fmt: skip
            if resp.status_code == 200:
                self.acked[user] = max(self.acked.get(user, 0), seqs[-1])
                resp.success()
            else:
                resp.failure(f"unexpected {resp.status_code}")
