"""What the chaos scenarios run against: a cluster this suite starts, with every store path behind a
Toxiproxy-compatible server, or a running deployment and its real Toxiproxy.

A self-started cluster has one Redis (embedded unless ``NOTIFLOW_TEST_REDIS_URL``), one PostgreSQL database
(embedded server unless ``NOTIFLOW_TEST_DATABASE_URL``), ``python -m chaos.toxiproxy`` on a free port, and four
proxies: gateway→Redis, workers→Redis, gateway→PostgreSQL, workers→PostgreSQL. The dev stack points each role's
processes at their own proxies (``DevStack(role_env=...)``), and runs with settings for quick recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from chaos.toxi import Toxi
from conformance.cluster import Stores
from conformance.sink import WebhookSink

#: The four store paths a network nemesis can hit.
PATHS = ("gateway_redis", "workers_redis", "gateway_postgres", "workers_postgres")
REDIS_PATHS = ("gateway_redis", "workers_redis")
POSTGRES_PATHS = ("gateway_postgres", "workers_postgres")

#: Settings for quick recovery: short reclaim idle (an entry is reclaimed every ~second while it is stuck, so a
#: store outage of a few seconds claims it more often than the poison threshold), few and short retries, a
#: small presence TTL, quick socket pings (a half-open client is found in seconds).
QUICK_RECOVERY_ENV = {
    "NOTIFLOW_PRESENCE_TTL_S": "3",
    "NOTIFLOW_MAX_RETRIES": "2",
    "NOTIFLOW_RETRY_BASE_MS": "200",
    "NOTIFLOW_RETRY_CAP_MS": "1000",
    "NOTIFLOW_RECLAIM_IDLE_MS": "1000",
    "NOTIFLOW_RECLAIM_INTERVAL_S": "0.5",
    "NOTIFLOW_POISON_MAX_DELIVERIES": "3",
    "NOTIFLOW_RECONCILE_INTERVAL_S": "1",
    "NOTIFLOW_STUCK_AFTER_S": "10",
    "NOTIFLOW_OUTBOX_GRACE_S": "2",
    "NOTIFLOW_WEBHOOK_TIMEOUT_S": "2",
    "NOTIFLOW_WEBHOOK_RETRY_RATE_PER_HOST": "50",
    "NOTIFLOW_WS_PING_INTERVAL_S": "2",
    "NOTIFLOW_WS_PING_TIMEOUT_S": "3",
    "NOTIFLOW_WS_QUEUE_MAX": "64",
    "NOTIFLOW_SHUTDOWN_GRACE_S": "2",
    "NOTIFLOW_LOG_LEVEL": "WARNING",
}


class NeedsControl(Exception):
    """The scenario needs something only a self-started cluster has (killing processes, direct store access)."""


@dataclass
class ChaosTarget:
    """Gateways to talk to, the Toxiproxy API and the proxy of each path; the stack when this suite started it."""

    urls: list[str]
    toxi: Toxi
    paths: dict[str, str]
    sink: WebhookSink | None = None
    stack: Any | None = None
    redis_url: str | None = None  # direct, bypassing the proxies (poison entries, data loss)
    stream_key: str | None = None
    key_prefix: str | None = None
    embedded_redis: Any | None = None  # restartable (a restart loses every key)
    redis_cluster: Any | None = None  # the EmbeddedRedisCluster the platform runs on (chaos/redis_cluster.py)
    env: dict[str, str] = field(default_factory=dict)

    def require_stack(self, why: str) -> Any:
        if self.stack is None:
            raise NeedsControl(f"needs a cluster started by the suite ({why}); --base-url targets are not controlled")
        return self.stack

    def require_redis(self, why: str) -> str:
        if self.redis_url is None or self.stream_key is None:
            raise NeedsControl(f"needs direct Redis access ({why}); a --base-url deployment gives none")
        return self.redis_url

    def require_sink(self) -> WebhookSink:
        if self.sink is None:
            raise NeedsControl("needs a webhook downstream the platform can reach; a --base-url deployment has none")
        return self.sink

    def proxies(self, paths: tuple[str, ...]) -> list[str]:
        """Proxy names of ``paths``, each once (a deployment may route several paths through one proxy)."""
        return list(dict.fromkeys(self.paths[p] for p in paths))


def _via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's listen address (user and password kept)."""
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{port}", parts.path, parts.query, parts.fragment))


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or (6379 if parts.scheme.startswith('redis') else 5432)}"


class ToxiproxyServer:
    """``python -m chaos.toxiproxy`` as a child process on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        from notiflow.devstack import free_port

        self.port = free_port()
        self.log_path = workdir / "toxiproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ToxiproxyServer:
        import socket

        argv = [sys.executable, "-m", "chaos.toxiproxy", "--host", "127.0.0.1", "--port", str(self.port)]
        root = Path(__file__).resolve().parent.parent
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                argv, cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chaos.toxiproxy exited with {self._proc.returncode}: {self.log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"chaos.toxiproxy did not listen on {self.port} within {timeout_s}s")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class ChaosCluster:
    """Starts and stops everything a self-started chaos target needs. Use ``start()`` then ``stop()``."""

    def __init__(
        self,
        *,
        gateways: int = 2,
        stream_workers: int = 2,
        retry_workers: int = 1,
        env: dict[str, str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.counts = (gateways, stream_workers, retry_workers)
        self.env = dict(env or {})
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="notiflow-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._cleanup = contextlib.ExitStack()
        self.target: ChaosTarget | None = None

    def start(self) -> ChaosTarget:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> ChaosTarget:
        from notiflow.config import Settings
        from notiflow.devstack import DevStack, EmbeddedRedis, free_port, free_port_range

        embedded_redis = None
        stores = Stores()
        if not os.environ.get("NOTIFLOW_TEST_REDIS_URL"):
            # Our own Redis, so that the data-loss nemesis may restart it without touching anyone else's.
            embedded_redis = EmbeddedRedis(self.workdir)
            embedded_redis.start()
            self._cleanup.callback(embedded_redis.stop)
            stores.redis_url = embedded_redis.url
        stores.start()
        self._cleanup.callback(stores.stop)
        assert stores.redis_url is not None
        database_url = stores.new_database()
        prefix = stores.new_prefix()
        sink = WebhookSink().start()
        self._cleanup.callback(sink.stop)

        server = ToxiproxyServer(self.workdir).start()
        self._cleanup.callback(server.stop)
        toxi = Toxi(server.url)
        upstream = {"redis": stores.redis_url, "postgres": database_url}
        urls: dict[str, str] = {}
        for path in PATHS:
            store = path.split("_", 1)[1]
            port = free_port()
            toxi.create_sync(path, listen=f"127.0.0.1:{port}", upstream=_host_port(upstream[store]))
            urls[path] = _via(upstream[store], port)

        gateways, stream_workers, retry_workers = self.counts
        extra_env = {
            **QUICK_RECOVERY_ENV,
            "NOTIFLOW_KEY_PREFIX": prefix,
            "NOTIFLOW_STREAM_KEY": f"{prefix}:stream",
            "NOTIFLOW_WEBHOOK_ALLOWED_HOSTS": sink.host,
            # The sink verifies Standard Webhooks signatures with its secret; it listens on loopback.
            "NOTIFLOW_WEBHOOK_SECRET": sink.secret,
            "NOTIFLOW_WEBHOOK_ALLOW_PRIVATE": "true",
            **self.env,
        }
        workers = {"NOTIFLOW_REDIS_URL": urls["workers_redis"], "NOTIFLOW_DATABASE_URL": urls["workers_postgres"]}
        role_env = {
            "gateway": {"NOTIFLOW_REDIS_URL": urls["gateway_redis"], "NOTIFLOW_DATABASE_URL": urls["gateway_postgres"]},
            "stream-worker": workers,
            "retry-worker": workers,
        }
        stack = DevStack(
            Settings(redis_url=stores.redis_url, database_url=database_url),
            gateways=gateways,
            stream_workers=stream_workers,
            retry_workers=retry_workers,
            base_port=free_port_range(gateways),
            extra_env=extra_env,
            role_env=role_env,
            workdir=self.workdir / "stack",
        )
        stack.start()
        self._cleanup.callback(stack.stop)
        self.target = ChaosTarget(
            urls=list(stack.gateway_urls),
            toxi=toxi,
            paths={p: p for p in PATHS},
            sink=sink,
            stack=stack,
            redis_url=stores.redis_url,
            stream_key=f"{prefix}:stream",
            key_prefix=prefix,
            embedded_redis=embedded_redis,
            env=extra_env,
        )
        return self.target

    def stop(self) -> None:
        self._cleanup.close()


def deployment(urls: list[str], toxiproxy_url: str, redis_proxy: str, postgres_proxy: str) -> ChaosTarget:
    """A running deployment: every Redis path goes through ``redis_proxy``, every PostgreSQL path through
    ``postgres_proxy`` (docker-compose.chaos.yml routes all of a store's traffic through one proxy)."""
    paths = {p: (redis_proxy if p in REDIS_PATHS else postgres_proxy) for p in PATHS}
    return ChaosTarget(urls=[u.rstrip("/") for u in urls], toxi=Toxi(toxiproxy_url), paths=paths)


async def start_cluster(**kwargs: Any) -> tuple[ChaosCluster, ChaosTarget]:
    """``ChaosCluster(**kwargs).start()`` off the event loop (it blocks until every gateway is ready)."""
    cluster = ChaosCluster(**kwargs)
    target = await asyncio.to_thread(cluster.start)
    return cluster, target
