"""What the checks run against: a deployment given by URL, or clusters this suite starts and stops itself.

Self-started clusters come from the project's dev stack. One Redis and one PostgreSQL serve every cluster of
a session: embedded ones, or the servers named by ``NOTIFLOW_TEST_REDIS_URL`` / ``NOTIFLOW_TEST_DATABASE_URL``.
Each cluster gets a fresh database and its own Redis key prefix, so clusters never see each other's state.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

#: Settings of the shared cluster: few and fast retries (I6). Its presence TTL is short too (I7).
MAX_RETRIES, RETRY_BASE_MS, RETRY_CAP_MS, PRESENCE_TTL_S = 2, 200, 1000, 3
#: Webhook retries per second per downstream host (the platform's guard against retry storms).
RETRY_RATE_PER_HOST = 10


def shared_env(webhook_host: str, webhook_secret: str) -> dict[str, str]:
    """The environment of the shared cluster; ``webhook_host`` is the suite's webhook sink (on loopback, so
    private addresses are allowed), ``webhook_secret`` what it verifies signatures with."""
    return {
        "NOTIFLOW_WEBHOOK_SECRET": webhook_secret,
        "NOTIFLOW_WEBHOOK_ALLOW_PRIVATE": "true",
        "NOTIFLOW_PRESENCE_TTL_S": str(PRESENCE_TTL_S),
        "NOTIFLOW_MAX_RETRIES": str(MAX_RETRIES),
        "NOTIFLOW_RETRY_BASE_MS": str(RETRY_BASE_MS),
        "NOTIFLOW_RETRY_CAP_MS": str(RETRY_CAP_MS),
        "NOTIFLOW_WEBHOOK_ALLOWED_HOSTS": webhook_host,
        "NOTIFLOW_WEBHOOK_TIMEOUT_S": "2",
        "NOTIFLOW_WEBHOOK_RETRY_RATE_PER_HOST": str(RETRY_RATE_PER_HOST),
    }


@dataclass
class Target:
    """A deployment under test. ``stack`` is the DevStack when this suite started it, else None."""

    urls: list[str]
    stack: Any | None = None
    env: dict[str, str] = field(default_factory=dict)
    database_url: str | None = None

    @property
    def controllable(self) -> bool:
        return self.stack is not None

    def require_control(self, why: str) -> None:
        """Skip the calling check against a deployment this suite did not start (it cannot kill or reconfigure)."""
        if not self.controllable:
            pytest.skip(f"needs a cluster started by the suite ({why}); --base-url targets are not controlled")

    def stop(self) -> None:
        """Stop a self-started cluster now (its stores stay for the session). Safe to call twice."""
        stack, self.stack = self.stack, None
        if stack is not None:
            stack.stop()

    def require_nodes(self, count: int) -> None:
        if len(self.urls) < count:
            pytest.skip(f"needs {count} gateway nodes; give --base-url {count} times")


class Stores:
    """The session's Redis and PostgreSQL, and the per-cluster databases and key prefixes made on them."""

    def __init__(self) -> None:
        self.redis_url = os.environ.get("NOTIFLOW_TEST_REDIS_URL") or None
        self.admin_db_url = os.environ.get("NOTIFLOW_TEST_DATABASE_URL") or None
        self._embedded: list[Any] = []
        self._databases: list[str] = []
        self._prefixes: list[str] = []

    def start(self) -> None:
        from notiflow.devstack import EmbeddedPostgres, EmbeddedRedis

        if self.redis_url is None:
            redis = EmbeddedRedis()
            redis.start()
            self._embedded.append(redis)
            self.redis_url = redis.url
        if self.admin_db_url is None:
            pg = EmbeddedPostgres()
            pg.start()
            self._embedded.append(pg)
            self.admin_db_url = pg.url

    def new_database(self) -> str:
        from notiflow.devstack import psql

        assert self.admin_db_url is not None
        name = f"notiflow_conf_{secrets.token_hex(4)}"
        psql(self.admin_db_url, f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        parts = urlsplit(self.admin_db_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))

    def new_prefix(self) -> str:
        prefix = f"nfconf{secrets.token_hex(4)}"
        self._prefixes.append(prefix)
        return prefix

    def stop(self) -> None:
        from notiflow.devstack import psql

        for name in self._databases:
            with contextlib.suppress(Exception):
                psql(str(self.admin_db_url), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self._prefixes and self.redis_url:
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis.from_url(self.redis_url)
                for prefix in self._prefixes:
                    for key in client.scan_iter(match=f"{prefix}*", count=1000):
                        client.delete(key)
                client.close()
        for server in reversed(self._embedded):
            with contextlib.suppress(Exception):
                server.stop()


class Clusters:
    """Starts dev-stack clusters on the session's stores; stops every one of them at the end."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self._targets: list[Target] = []

    def start(
        self, *, gateways: int = 2, stream_workers: int = 2, retry_workers: int = 1, env: dict[str, str] | None = None
    ) -> Target:
        from notiflow.config import Settings
        from notiflow.devstack import DevStack, free_port_range

        prefix = self.stores.new_prefix()
        database_url = self.stores.new_database()
        extra_env = {
            "NOTIFLOW_KEY_PREFIX": prefix,
            "NOTIFLOW_STREAM_KEY": f"{prefix}:stream",
            "NOTIFLOW_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        settings = Settings(redis_url=self.stores.redis_url, database_url=database_url)
        stack = DevStack(
            settings,
            gateways=gateways,
            stream_workers=stream_workers,
            retry_workers=retry_workers,
            base_port=free_port_range(gateways),
            extra_env=extra_env,
        )
        stack.start()
        target = Target(list(stack.gateway_urls), stack, extra_env, database_url)
        self._targets.append(target)
        return target

    def stop_all(self) -> None:
        for target in reversed(self._targets):
            with contextlib.suppress(Exception):
                target.stop()
        self._targets.clear()
