"""Targets, shared clusters and the end-of-run summary of the conformance suite.

``pytest conformance/`` starts its own cluster from the dev stack (two gateways, two stream workers, one retry
worker) and stops it afterwards; ``--base-url URL`` (repeatable) runs the same checks against a deployment
that is already running, skipping what needs to kill processes or change settings.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from conformance import client, report
from conformance.cluster import Clusters, Stores, Target, shared_env
from conformance.history import History
from conformance.profile import PROFILES, Profile
from conformance.sink import WebhookSink
from conformance.workload import MixedRun, run_mixed


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("notiflow conformance")
    # chaos/conftest.py defines the same option (same meaning): whichever loads second keeps the first's.
    with contextlib.suppress(ValueError):
        group.addoption(
            "--base-url", action="append", default=[], help="a running gateway to test (repeatable); default: start one"
        )
    group.addoption("--profile", choices=sorted(PROFILES), default="default", help="run sizes (default, soak)")
    group.addoption("--report-limit", type=int, default=25, help="rows per section of a failure report")
    group.addoption("--admin-key", default=None,
                    help="an API key with every scope, for I11 against --base-url (else I11 is skipped there)")
    group.addoption("--jwt-secret", default=None,
                    help="the deployment's NOTIFLOW_JWT_SECRET, for I11 to sign end users' tokens")


def pytest_configure(config: pytest.Config) -> None:
    # Against a deployment with auth on, every request carries the admin key and every socket its user's
    # token, signed with --jwt-secret (I11 makes its own).
    client.CREDENTIAL = config.getoption("--admin-key", default=None)
    client.JWT_SECRET = config.getoption("--jwt-secret", default=None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    factor = PROFILES[config.getoption("--profile")].timeout_factor
    if factor == 1.0:
        return
    default = float(config.getini("timeout") or 120)
    for item in items:
        marker = item.get_closest_marker("timeout")
        base = float(marker.args[0]) if marker and marker.args else default
        item.add_marker(pytest.mark.timeout(base * factor))


@pytest.fixture(scope="session")
def profile(pytestconfig: pytest.Config) -> Profile:
    return PROFILES[pytestconfig.getoption("--profile")]


@pytest.fixture(scope="session")
def report_limit(pytestconfig: pytest.Config) -> int:
    return int(pytestconfig.getoption("--report-limit"))


@pytest.fixture(scope="session")
def base_urls(pytestconfig: pytest.Config) -> list[str]:
    return [u.rstrip("/") for u in pytestconfig.getoption("--base-url")]


@pytest.fixture(scope="session")
def sink() -> Iterator[WebhookSink]:
    server = WebhookSink().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def clusters(base_urls: list[str]) -> Iterator[Clusters | None]:
    if base_urls:
        yield None
        return
    stores = Stores()
    stores.start()
    manager = Clusters(stores)
    try:
        yield manager
    finally:
        manager.stop_all()
        stores.stop()


@pytest.fixture(scope="session")
def target(base_urls: list[str], clusters: Clusters | None, sink: WebhookSink) -> Target:
    if clusters is None:
        return Target(base_urls)
    return clusters.start(
        gateways=2,
        stream_workers=2,
        retry_workers=1,
        env=shared_env(sink.host, sink.secret),
    )


@pytest.fixture(scope="session")
def start_cluster(clusters: Clusters | None) -> Callable[..., Target]:
    """Start a dedicated cluster with other settings (self-started mode only; skips otherwise)."""

    def start(why: str, **kwargs: Any) -> Target:
        if clusters is None:
            pytest.skip(f"needs a cluster started by the suite ({why}); --base-url targets are not controlled")
        return clusters.start(**kwargs)

    return start


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(15.0, connect=5.0), limits=limits, headers=client.auth_headers()
    ) as http_client:
        yield http_client


@pytest.fixture
def run_id() -> str:
    """A fresh prefix for user ids, so runs against a long-lived deployment never meet old data."""
    return f"c{secrets.token_hex(4)}"


@pytest.fixture
def history(request: pytest.FixtureRequest) -> History:
    return History(request.node.nodeid)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mixed(target: Target, profile: Profile) -> MixedRun:
    """The big mixed run, shared by the I1, I2 and I4 checks (it is the expensive part of the suite)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(15.0, connect=5.0), limits=limits, headers=client.auth_headers()
    ) as http_client:
        run = await run_mixed(target.urls, http_client, profile, f"m{secrets.token_hex(3)}")
    report.record("mixed run (I1, I2, I4)", run.verdict)
    return run


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not report.entries():
        return
    terminalreporter.section("notiflow conformance summary")
    for line in report.summary_lines():
        terminalreporter.write_line(line)
