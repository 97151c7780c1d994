"""DevStack: Redis, PostgreSQL, gateways and workers on one machine, for `notiflow dev` (dev.py) and the tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import SecretStr

from notiflow.config import Settings
from notiflow.devstack._proc import DevStackError, free_port_range
from notiflow.devstack.cluster import EmbeddedRedisCluster
from notiflow.devstack.embedded import EmbeddedPostgres, EmbeddedRedis
from notiflow.devstack.supervisor import ProcessSpec, Supervisor
from notiflow.fanin import copy_port
from notiflow.streams.keys import partition_slots

__all__ = ["DevStack", "settings_env"]

# Set per process by the stack itself, never copied from the caller's settings.
_PER_PROCESS = frozenset({"redis_url", "database_url", "node_id", "port", "metrics_port"})
_ROLES = ("gateway", "stream-worker", "retry-worker")
#: Any of these in a child's environment asks for authentication; with none, the stack runs with auth off.
_AUTH_VARS = ("NOTIFLOW_AUTH", "NOTIFLOW_JWT_SECRET", "NOTIFLOW_JWT_PUBLIC_KEY", "NOTIFLOW_API_KEYS")


def _text(value: object) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the NOTIFLOW_* environment a child process reads back into the same Settings."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name in _PER_PROCESS or value is None:
            continue
        if isinstance(value, list | tuple):
            text = ",".join(_text(v) for v in value)  # secrets as their values: to the child's env only
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = _text(value)
        env[f"NOTIFLOW_{name.upper()}"] = text
    return env


def migrate(database_url: str) -> None:
    """Apply the migrations the way a deployment does: ``python -m notiflow migrate``, in a child process."""
    done = subprocess.run(
        [sys.executable, "-m", "notiflow", "migrate"],
        env={**os.environ, "NOTIFLOW_DATABASE_URL": database_url},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        raise DevStackError(f"`python -m notiflow migrate` failed ({done.returncode}):\n{output}")


def cluster_settings(settings: Settings, masters: int) -> Settings:
    """Settings for a stack on a Redis Cluster: cluster mode on, and 4 partitions per master unless
    NOTIFLOW_STREAM_PARTITIONS says otherwise."""
    update: dict[str, Any] = {"redis_cluster": True}
    if "NOTIFLOW_STREAM_PARTITIONS" not in os.environ and settings.stream_partitions == 1:
        update["stream_partitions"] = 4 * masters
    return settings.model_copy(update=update)


class DevStack:
    """Every notiflow part as child processes, on loopback.

    Embedded Redis and PostgreSQL start only where ``settings.redis_url`` / ``settings.database_url``
    are unset. Gateways take consecutive ports from ``base_port`` (default ``settings.port``).
    ``extra_env`` goes to every process; ``role_env`` (keyed by role: ``gateway``, ``stream-worker``,
    ``retry-worker``) to that role's processes only, over ``extra_env``: the chaos suite points each role at
    its own fault proxy that way. Migrations always use ``settings.database_url`` directly.
    Authentication is off unless asked for: by ``settings`` (``auth``, a JWT key, API keys) or by the
    same variables in ``extra_env``, ``role_env`` or the environment.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        gateways: int = 1,
        stream_workers: int = 1,
        retry_workers: int = 1,
        base_port: int | None = None,
        extra_env: dict[str, str] | None = None,
        role_env: dict[str, dict[str, str]] | None = None,
        workdir: Path | None = None,
        ready_timeout_s: float = 60.0,
        redis_cluster: int = 0,
    ) -> None:
        if redis_cluster:
            settings = cluster_settings(settings, redis_cluster)
        self.settings = settings
        #: Masters of the embedded Redis Cluster to start (with one replica each) when no Redis URL is given.
        self.cluster_masters = redis_cluster
        self.embedded_cluster: EmbeddedRedisCluster | None = None
        self.base_port = settings.port if base_port is None else base_port
        self.gateway_urls = [f"http://127.0.0.1:{self.base_port + i}" for i in range(gateways)]
        counts = dict(zip(_ROLES, (gateways, stream_workers, retry_workers), strict=True))
        self.process_names = [f"{role}-{i}" for role in _ROLES for i in range(counts[role])]
        self.extra_env = dict(extra_env or {})
        unknown = set(role_env or {}) - set(_ROLES)
        if unknown:
            raise DevStackError(f"role_env names unknown roles {sorted(unknown)}; known: {', '.join(_ROLES)}")
        self.role_env = {role: dict(env) for role, env in (role_env or {}).items()}
        self.ready_timeout_s = ready_timeout_s
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="notiflow-dev-")) if workdir is None else workdir
        self.supervisor = Supervisor(self.workdir)
        self.embedded_redis: EmbeddedRedis | None = None
        self.embedded_postgres: EmbeddedPostgres | None = None
        self.node_ids: dict[str, str] = {}
        # Each worker's /metrics: a free port per start (0 in the settings turns them all off).
        self.metrics_urls: dict[str, str] = {}
        self._redis_url = settings.redis_url
        self._database_url = settings.database_url
        self._started = False

    @property
    def redis_url(self) -> str:
        if self._redis_url is None:
            raise DevStackError("the stack is not started: no Redis yet")
        return self._redis_url

    @property
    def database_url(self) -> str:
        if self._database_url is None:
            raise DevStackError("the stack is not started: no PostgreSQL yet")
        return self._database_url

    @property
    def log_dir(self) -> Path:
        return self.supervisor.log_dir

    @property
    def grace_s(self) -> float:
        # Longer than the children's own drain time, so SIGKILL only ever hits a process that hung.
        return self.settings.shutdown_grace_s + 5.0

    def start(self) -> None:
        """Stores, migrations, then every process; returns once each gateway's /readyz answers 200."""
        if self._started:
            raise DevStackError("the stack is already started")
        self._started = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self._redis_url is None and self.cluster_masters:
                self.embedded_cluster = EmbeddedRedisCluster(self.cluster_masters, 1, self.workdir)
                self.embedded_cluster.start()
                self.embedded_cluster.balance(partition_slots(self.settings.stream_partitions))
                self._redis_url = self.embedded_cluster.url
            if self._redis_url is None:
                self.embedded_redis = EmbeddedRedis(self.workdir)
                self.embedded_redis.start()
                self._redis_url = self.embedded_redis.url
            if self._database_url is None:
                self.embedded_postgres = EmbeddedPostgres(self.workdir)
                self.embedded_postgres.start()
                self._database_url = self.embedded_postgres.url
            self.migrate()
            for name in self.process_names:
                self.start_process(name, wait=False)
            self.supervisor.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def migrate(self) -> None:
        """Run `python -m notiflow migrate` against the stack's database."""
        migrate(self.database_url)

    def start_process(self, name: str, *, wait: bool = True) -> None:
        """(Re)start ``name`` with a fresh NOTIFLOW_NODE_ID; for a gateway, ``wait`` for its /readyz."""
        if name not in self.process_names:
            raise DevStackError(f"no process named {name!r}; known: {', '.join(self.process_names)}")
        role, index = name.rsplit("-", 1)
        node_id = f"{name}-{secrets.token_hex(3)}"
        argv = [sys.executable, "-m", "notiflow", role]
        ready_url = None
        if role == "gateway":
            port = self.base_port + int(index)
            argv += ["--port", str(port)]
            ready_url = f"http://127.0.0.1:{port}/readyz"
            self.metrics_urls[name] = f"http://127.0.0.1:{port}/metrics"
            copies = self.settings.gateway_processes
            # Copies behind SO_REUSEPORT: their parent serves every copy's metrics (fanin.py); one needs none.
            metrics_port = self._metrics_ports(name, copies) if copies > 1 else 0
        else:
            copies = self.settings.stream_worker_processes if role == "stream-worker" else 1
            metrics_port = self._metrics_ports(name, copies)
        env = {
            **os.environ,
            **settings_env(self.settings),
            "NOTIFLOW_REDIS_URL": self.redis_url,
            "NOTIFLOW_DATABASE_URL": self.database_url,
            # Unbuffered, so that a log file shows what a killed process last did.
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
            **self.role_env.get(role, {}),
            "NOTIFLOW_NODE_ID": node_id,
            "NOTIFLOW_METRICS_PORT": str(metrics_port),
        }
        if not any(env.get(var) for var in _AUTH_VARS):
            env["NOTIFLOW_AUTH"] = "off"
        self.node_ids[name] = node_id
        self.supervisor.start(ProcessSpec(name, argv, env, ready_url))
        if wait and ready_url is not None:
            self.supervisor.wait_ready(self.ready_timeout_s, names=[name])

    def _metrics_ports(self, name: str, copies: int) -> int:
        """A free metrics port for a process, recorded in ``metrics_urls``; 0 when the settings turn metrics off.
        With copies, the port is their parent's (all of them, labelled) and the next ones each copy's own
        (fanin.copy_port), recorded as ``<name>.p<i>``."""
        if not self.settings.metrics_port:
            return 0
        first = free_port_range(copies + 1 if copies > 1 else 1)
        self.metrics_urls[name] = f"http://127.0.0.1:{first}/metrics"
        if copies > 1:
            for i in range(copies):
                self.metrics_urls[f"{name}.p{i}"] = f"http://127.0.0.1:{copy_port(first, i)}/metrics"
        return first

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.supervisor.kill(name, sig)

    def alive(self, name: str) -> bool:
        return self.supervisor.alive(name)

    def stop(self) -> None:
        """Processes first (SIGTERM, grace, SIGKILL), so none of them sees its stores vanish; then the stores."""
        self.supervisor.stop_all(self.grace_s)
        for server in (self.embedded_redis, self.embedded_cluster, self.embedded_postgres):
            if server is not None:
                server.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

