"""``pytest chaos/``: the scenarios on a cluster this suite starts (quick profile), or against a deployment:

    pytest chaos/ --base-url URL [--base-url URL ...] --toxiproxy-url http://127.0.0.1:8474 \\
        --redis-proxy redis --postgres-proxy postgres

which runs every network scenario and skips, with the reason, those that kill processes or touch the stores.
Every run writes ``chaos-report/`` (``--chaos-report-dir``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from chaos import profile as profiles
from chaos import report
from chaos.cluster import ChaosCluster, ChaosTarget, deployment

_results: list[report.Result] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("notiflow chaos")
    # --base-url is also the conformance suite's option (same meaning); a session collecting both has it once.
    with contextlib.suppress(ValueError):
        group.addoption("--base-url", action="append", default=[], help="a running gateway (repeatable)")
    group.addoption("--toxiproxy-url", default="http://127.0.0.1:8474", help="Toxiproxy API of the deployment")
    group.addoption("--redis-proxy", default="redis", help="the deployment's Toxiproxy proxy in front of Redis")
    group.addoption("--postgres-proxy", default="postgres", help="... in front of PostgreSQL")
    group.addoption("--chaos-duration", type=float, default=None, help="seconds per scenario (default: quick)")
    group.addoption("--chaos-report-dir", type=Path, default=Path("chaos-report"), help="where the report goes")


@pytest.fixture(scope="session")
def chaos_profile(pytestconfig: pytest.Config) -> profiles.Profile:
    duration = pytestconfig.getoption("--chaos-duration")
    return profiles.QUICK if duration is None else profiles.long(duration)


@pytest.fixture(scope="session")
def chaos_target(pytestconfig: pytest.Config) -> Iterator[ChaosTarget]:
    urls = [u.rstrip("/") for u in pytestconfig.getoption("--base-url")]
    if urls:
        opt = pytestconfig.getoption
        yield deployment(urls, opt("--toxiproxy-url"), opt("--redis-proxy"), opt("--postgres-proxy"))
        return
    cluster = ChaosCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def chaos_http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0), limits=limits) as client:
        yield client


@pytest.fixture(scope="session")
def chaos_results() -> list[report.Result]:
    return _results


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _results:
        return
    directory = session.config.getoption("--chaos-report-dir")
    path = report.write(list(_results), Path(session.config.rootpath) / directory, "notiflow chaos report (pytest)")
    reporter: Any = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nchaos report: {path}")
        reporter.write_line(report.table(list(_results)))
