"""Shared fixtures: real Redis and PostgreSQL, nothing mocked.

If ``NOTIFLOW_TEST_REDIS_URL`` / ``NOTIFLOW_TEST_DATABASE_URL`` are set the tests use those servers (a
fresh database ``notiflow_test_<random>`` is created on that PostgreSQL and dropped at the end; on Redis
every test keeps to its own random key prefix and nothing is ever flushed). Otherwise an embedded Redis
and PostgreSQL start once per session. A missing piece skips on a laptop and fails in CI.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from notiflow import devstack
from notiflow.config import Settings
from notiflow.devstack import DevStack, DevStackError, EmbeddedPostgres, EmbeddedRedis, free_port_range, psql

MIGRATIONS_TABLE = "schema_migrations"

_TRUNCATE_ALL = f"""
DO $$
DECLARE tables text;
BEGIN
    SELECT string_agg(format('%I.%I', schemaname, tablename), ', ') INTO tables
    FROM pg_tables WHERE schemaname = 'public' AND tablename <> '{MIGRATIONS_TABLE}';
    IF tables IS NOT NULL THEN
        EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY CASCADE';
    END IF;
END $$;
"""


@dataclass(frozen=True)
class Stores:
    redis_url: str
    database_url: str
    embedded_redis: EmbeddedRedis | None
    embedded_postgres: EmbeddedPostgres | None


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def migrate(database_url: str) -> None:
    """Apply the migrations the way a deployment does: ``python -m notiflow migrate``."""
    if importlib.util.find_spec("notiflow.__main__") is None:
        _unavailable("`python -m notiflow` does not exist yet: cannot apply the migrations")
    try:
        devstack.migrate(database_url)
    except DevStackError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def stores() -> Iterator[Stores]:
    with contextlib.ExitStack() as cleanup:
        embedded_redis = embedded_postgres = None
        redis_url = os.environ.get("NOTIFLOW_TEST_REDIS_URL")
        if not redis_url:
            embedded_redis = cleanup.enter_context(EmbeddedRedis())
            redis_url = embedded_redis.url
        server_url = os.environ.get("NOTIFLOW_TEST_DATABASE_URL")
        if not server_url:
            embedded_postgres = cleanup.enter_context(EmbeddedPostgres())
            server_url = embedded_postgres.url
        name = f"notiflow_test_{secrets.token_hex(4)}"
        psql(server_url, f'CREATE DATABASE "{name}"')
        cleanup.callback(psql, server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        database_url = _with_database(server_url, name)
        migrate(database_url)
        yield Stores(redis_url, database_url, embedded_redis, embedded_postgres)


@pytest.fixture
def own_database(stores: Stores) -> Iterator[str]:
    """The URL of an empty database of the test's own on the session's PostgreSQL, dropped after the test: not
    migrated, so that the test takes it as far as it needs (an old schema, written, then upgraded; or a head
    whose legacy partitions may be dropped)."""
    name = f"notiflow_test_{secrets.token_hex(4)}"
    psql(stores.database_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(stores.database_url, name)
    finally:
        psql(stores.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def clean_database(stores: Stores) -> None:
    """Empty every table but the migrations', so that no test sees another's rows."""
    psql(stores.database_url, _TRUNCATE_ALL)


@pytest.fixture
def settings(stores: Stores, clean_database: None) -> Iterator[Settings]:
    """Settings on the session's stores, with a Redis namespace of their own and short timings."""
    tag = f"t{secrets.token_hex(4)}"
    yield Settings(
        redis_url=stores.redis_url,
        database_url=stores.database_url,
        key_prefix=tag,
        stream_key=f"{tag}:stream",
        presence_ttl_s=2,
        retry_base_ms=50,
        retry_cap_ms=500,
        reclaim_idle_ms=1000,
        reclaim_interval_s=0.5,
        worker_block_ms=100,
        reconcile_interval_s=0.3,
        outbox_grace_s=1,
        shutdown_grace_s=2,
        # Hand-offs (dispatched/offline) are recorded this late: tests that wait for them wait less.
        dispatch_record_delay_ms=200,
        # The suites test delivery, not authentication: auth is off unless a test turns it on
        # (tests of auth: platform/tests/integration/test_auth.py, conformance/test_i11_security.py).
        auth="off",
    )
    # Only this test's keys: the server may be shared, so never FLUSHALL.
    client = redis.Redis.from_url(stores.redis_url)
    try:
        for key in client.scan_iter(match=f"{tag}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


StackFactory = Callable[..., DevStack]


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Kept so that the stack fixture's teardown knows whether to print the processes' logs.
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture
def stack(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StackFactory]:
    """Build and start a DevStack on the session's stores; every stack is stopped after the test.

    ``stack(gateways=2, stream_workers=1, retry_workers=1, extra_env={...}, **setting_overrides)``.
    When the test fails, the tail of each process's log is printed with the failure.
    """
    stacks: list[DevStack] = []

    def build(
        *,
        gateways: int = 1,
        stream_workers: int = 1,
        retry_workers: int = 1,
        extra_env: dict[str, str] | None = None,
        role_env: dict[str, dict[str, str]] | None = None,
        **setting_overrides: Any,
    ) -> DevStack:
        stack_settings = settings.model_copy(update=setting_overrides) if setting_overrides else settings
        dev = DevStack(
            stack_settings,
            gateways=gateways,
            stream_workers=stream_workers,
            retry_workers=retry_workers,
            base_port=free_port_range(gateways),
            extra_env=extra_env,
            role_env=role_env,
            workdir=tmp_path / f"stack-{len(stacks)}",
        )
        stacks.append(dev)
        dev.start()
        return dev

    yield build
    reports = request.node.stash.get(_REPORTS, {})
    failed = any(r.failed for r in reports.values())
    for dev in reversed(stacks):
        dev.stop()
        if failed:
            _print_logs(dev)


def _print_logs(dev: DevStack) -> None:
    from notiflow.devstack._proc import tail

    for name in dev.process_names:
        path = dev.supervisor.log_path(name)
        print(f"\n----- {name} ({path}) -----\n{tail(path, lines=60)}")
