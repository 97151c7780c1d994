"""The dev stack's parts: embedded servers start, answer, restart and leave nothing behind; the supervisor
kills, restarts and stops its children as documented."""

from __future__ import annotations

import base64
import os
import signal
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from helpers import wait_for, wait_for_sync
from pydantic import SecretStr

from notiflow.config import Settings
from notiflow.devstack import (
    DevStack,
    DevStackError,
    EmbeddedPostgres,
    EmbeddedRedis,
    ProcessSpec,
    Supervisor,
    ephemeral_ports,
    free_port,
    free_port_range,
    psql,
    run_dev,
    settings_env,
)
from notiflow.devstack._proc import pid_alive, port_accepts

# Start-up budgets: measured ~0.01 s for Redis and ~0.4 s (initdb included) for PostgreSQL on a
# 2-core box; the timeouts leave room for a loaded CI machine.
pytestmark = pytest.mark.timeout(60)

# A tiny HTTP child: GET /ready answers 200 (or 503 in "never" mode). "stubborn" ignores SIGTERM,
# "crash" exits at once, "chatty" writes a few MiB to stdout first (a pipe would fill and block it).
_CHILD = r"""
import http.server, signal, sys
port, mode = int(sys.argv[1]), sys.argv[2]
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "crash":
    print("boom: crashing on purpose", flush=True)
    sys.exit(3)
if mode == "chatty":
    for i in range(40000):
        print("x" * 100, i)
    sys.stdout.flush()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/ready" and mode != "never"
        self.send_response(200 if ok else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
print("serving", port, flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _spec(name: str, mode: str = "ok") -> ProcessSpec:
    port = free_port()
    return ProcessSpec(
        name=name,
        argv=[sys.executable, "-c", _CHILD, str(port), mode],
        env=None,
        ready_url=f"http://127.0.0.1:{port}/ready",
    )


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path)
    yield sup
    sup.stop_all(grace_s=1.0)


def test_free_ports_are_free_consecutive_and_never_ephemeral() -> None:
    """Outside the kernel's ephemeral range: a port from it could be taken as an outgoing connection's local port
    before the server that was given it binds (a conformance stack's gateway once failed with EADDRINUSE)."""
    low, high = ephemeral_ports()
    first = free_port_range(3)
    for port in range(first, first + 3):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
        assert not low <= port <= high, (port, low, high)
    for port in (free_port() for _ in range(50)):
        assert 1024 < port < 65536 and not low <= port <= high, (port, low, high)


def test_embedded_redis_answers_restarts_empty_and_leaves_nothing(tmp_path: Path) -> None:
    server = EmbeddedRedis(workdir=tmp_path)
    with server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        first_pid = server.pid
        server.restart()
        assert server.pid != first_pid
        assert client.get("k") is None  # no persistence: a restart loses the data
        root, pid = server.root, server.pid
        client.close()
    assert pid is not None and first_pid is not None
    assert not pid_alive(pid) and not pid_alive(first_pid)
    assert not root.exists()
    assert not port_accepts(server.port)


def test_embedded_postgres_answers_creates_databases_and_leaves_nothing(tmp_path: Path) -> None:
    server = EmbeddedPostgres(workdir=tmp_path)
    with server:
        assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        row = psql(server.url, "SELECT current_user, current_setting('fsync'), current_setting('max_connections')")
        assert row.strip() == "postgres|on|200"
        assert psql(server.url, "SHOW listen_addresses").strip() == "127.0.0.1"
        url = server.create_database("notiflow_x")
        assert url.endswith("/notiflow_x")
        psql(url, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        server.restart()  # a crash keeps what was committed (fsync is on)
        assert psql(url, "SELECT v FROM t").strip() == "42"
        pid, root = server.pid, server.root
        assert pid is not None
        # PostgreSQL refuses root, so as root it runs under an unprivileged account.
        assert os.stat(f"/proc/{pid}").st_uid != 0
    assert not pid_alive(pid)
    assert not root.exists()
    assert not port_accepts(server.port)


def test_embedded_postgres_rejects_odd_database_names() -> None:
    server = EmbeddedPostgres()
    with pytest.raises(ValueError):
        server.create_database('x"; DROP DATABASE postgres; --')


def test_supervisor_kill_is_not_a_crash_and_restart_gives_a_new_process(supervisor: Supervisor) -> None:
    supervisor.start(_spec("a"))
    supervisor.start(_spec("b"))
    supervisor.wait_ready(timeout_s=20)
    pid_a = supervisor.pid("a")
    assert pid_a is not None

    supervisor.kill("a")
    assert not supervisor.alive("a") and supervisor.pid("a") is None
    assert supervisor.returncode("a") == -signal.SIGKILL
    assert supervisor.alive("b")
    assert supervisor.unexpected_exits() == []

    supervisor.restart("a")
    supervisor.wait_ready(timeout_s=20, names=["a"])
    assert supervisor.pid("a") not in (None, pid_a)

    with pytest.raises(DevStackError, match="already running"):
        supervisor.start(supervisor.spec("a"))

    assert supervisor.stop_all(grace_s=10) == []
    assert not supervisor.alive("a") and not supervisor.alive("b")
    assert not pid_alive(pid_a)


def test_supervisor_reports_a_death_nobody_asked_for(supervisor: Supervisor) -> None:
    supervisor.start(_spec("victim"))
    supervisor.wait_ready(timeout_s=20)
    pid = supervisor.pid("victim")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for_sync(lambda: supervisor.unexpected_exits() == ["victim"], timeout_s=10)


def test_supervisor_sigstop_is_not_a_death(supervisor: Supervisor) -> None:
    supervisor.start(_spec("frozen"))
    supervisor.wait_ready(timeout_s=20)
    supervisor.kill("frozen", signal.SIGSTOP)
    supervisor.kill("frozen", signal.SIGCONT)
    supervisor.wait_ready(timeout_s=20)
    assert supervisor.alive("frozen")
    assert supervisor.unexpected_exits() == []


def test_stop_all_kills_what_ignores_sigterm_after_the_grace(supervisor: Supervisor) -> None:
    supervisor.start(_spec("polite"))
    supervisor.start(_spec("stubborn", "stubborn"))
    supervisor.wait_ready(timeout_s=20)
    assert supervisor.stop_all(grace_s=0.5) == ["stubborn"]
    assert supervisor.returncode("polite") == -signal.SIGTERM
    assert supervisor.returncode("stubborn") == -signal.SIGKILL


def test_wait_ready_fails_with_the_output_of_a_child_that_exits(supervisor: Supervisor) -> None:
    supervisor.start(_spec("crasher", "crash"))
    with pytest.raises(DevStackError, match="boom: crashing on purpose") as failure:
        supervisor.wait_ready(timeout_s=20)
    assert "exited with 3" in str(failure.value)


def test_wait_ready_times_out_naming_the_process(supervisor: Supervisor) -> None:
    supervisor.start(_spec("sleepy", "never"))
    with pytest.raises(DevStackError, match=r"sleepy not ready after 1.0s"):
        supervisor.wait_ready(timeout_s=1.0)
    assert supervisor.alive("sleepy")


def test_children_write_to_log_files_not_pipes(supervisor: Supervisor) -> None:
    supervisor.start(_spec("chatty", "chatty"))
    supervisor.wait_ready(timeout_s=30)
    log = supervisor.log_path("chatty")
    assert log.stat().st_size > 4_000_000
    assert "serving" in log.read_text()


def test_settings_survive_the_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        redis_url="redis://127.0.0.1:1/0",
        key_prefix="tabc",
        stream_key="tabc:stream",
        presence_ttl_s=2.5,
        webhook_allowed_hosts=["127.0.0.1:9000", "localhost"],
        webhook_secret=SecretStr("whsec_" + base64.b64encode(b"k" * 32).decode() + ",whsec_" + "A" * 32),
        webhook_allow_private=True,
        max_retries=3,
        # Secrets travel as their values (str() of a SecretStr is "**********").
        jwt_secret=SecretStr("a-secret-of-32-bytes-or-more-for-hs256"),
        api_keys=[SecretStr("k1"), SecretStr("k2")],
        auth="on",
    )
    env = settings_env(original)
    assert env["NOTIFLOW_API_KEYS"] == "k1,k2" and env["NOTIFLOW_JWT_SECRET"].startswith("a-secret")
    assert "NOTIFLOW_NODE_ID" not in env and "NOTIFLOW_REDIS_URL" not in env
    for key in [k for k in os.environ if k.startswith("NOTIFLOW_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    copy = Settings()
    skip = {"node_id", "redis_url", "database_url", "port"}
    assert copy.model_dump(exclude=skip) == original.model_dump(exclude=skip)


# No proxy: an http_proxy in the environment must not intercept 127.0.0.1.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_status(url: str) -> int:
    try:
        with _HTTP.open(url, timeout=2) as response:
            status: int = response.status
            return status
    except (urllib.error.URLError, OSError):
        return 0


def _pids_running(*argv_parts: str) -> list[int]:
    """Pids whose command line contains every one of ``argv_parts`` as an argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and all(part in args for part in argv_parts):
            found.append(int(entry.name))
    return found


def test_stack_runs_every_process_and_restarts_a_killed_one(stack: Callable[..., DevStack]) -> None:
    dev = stack(gateways=2, stream_workers=1, retry_workers=1)
    assert dev.process_names == ["gateway-0", "gateway-1", "stream-worker-0", "retry-worker-0"]
    assert dev.embedded_redis is None and dev.embedded_postgres is None  # the session's stores
    for url in dev.gateway_urls:
        assert _get_status(f"{url}/readyz") == 200
    old_node, old_pid = dev.node_ids["gateway-1"], dev.supervisor.pid("gateway-1")

    dev.kill("gateway-1")
    assert not dev.alive("gateway-1")
    assert _get_status(f"{dev.gateway_urls[1]}/readyz") == 0

    dev.start_process("gateway-1")
    assert _get_status(f"{dev.gateway_urls[1]}/readyz") == 200
    assert dev.node_ids["gateway-1"] != old_node
    assert dev.supervisor.pid("gateway-1") not in (None, old_pid)

    pids = [dev.supervisor.pid(name) for name in dev.process_names]
    dev.stop()
    assert not any(pid_alive(pid) for pid in pids if pid is not None)


def test_role_env_reaches_only_that_roles_processes_and_survives_a_restart(
    stack: Callable[..., DevStack], settings: Settings
) -> None:
    # The chaos suite points each role at its own fault proxy this way: the gateways' Redis URL differs.
    gateway_redis = f"{settings.redis_url}?client_name=gw"
    dev = stack(
        gateways=1, stream_workers=1, retry_workers=1,
        extra_env={"NOTIFLOW_LOG_LEVEL": "WARNING"},
        role_env={"gateway": {"NOTIFLOW_REDIS_URL": gateway_redis}, "retry-worker": {"NOTIFLOW_LOG_LEVEL": "INFO"}},
    )  # fmt: skip
    env = {name: dict(dev.supervisor.spec(name).env or {}) for name in dev.process_names}
    assert env["gateway-0"]["NOTIFLOW_REDIS_URL"] == gateway_redis
    assert env["stream-worker-0"]["NOTIFLOW_REDIS_URL"] == settings.redis_url
    assert env["retry-worker-0"]["NOTIFLOW_REDIS_URL"] == settings.redis_url
    assert [env[n]["NOTIFLOW_LOG_LEVEL"] for n in dev.process_names] == ["WARNING", "WARNING", "INFO"]
    assert _get_status(f"{dev.gateway_urls[0]}/readyz") == 200  # the gateway runs on its own URL
    dev.kill("gateway-0")
    dev.start_process("gateway-0")
    assert dev.supervisor.spec("gateway-0").env["NOTIFLOW_REDIS_URL"] == gateway_redis  # type: ignore[index]
    with pytest.raises(DevStackError, match="unknown roles"):
        DevStack(settings, role_env={"gatway": {}})


def test_run_dev_restarts_a_dead_child_and_stops_on_request(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port_range(1)
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(
        target=lambda: result.append(
            run_dev(
                settings.model_copy(update={"port": port}),
                gateways=1,
                stream_workers=1,
                retry_workers=1,
                stop=stop,
                workdir=tmp_path,
            )
        )
    )
    runner.start()
    try:
        readyz = f"http://127.0.0.1:{port}/readyz"
        wait_for_sync(lambda: _get_status(readyz) == 200, timeout_s=30)
        printed: list[str] = []

        def banner_printed() -> bool:
            printed.append(capsys.readouterr().out)
            return "Ctrl-C stops everything" in "".join(printed)

        wait_for_sync(banner_printed, timeout_s=10)
        banner = "".join(printed)
        assert f"gateway     http://127.0.0.1:{port}" in banner
        assert "curl -X POST" in banner and str(tmp_path / "logs") in banner
        # The project's own commands, runnable as printed (issue 22: websocat is installed by nothing).
        assert f"notiflow tail alice --url http://127.0.0.1:{port}" in banner and "websocat" not in banner
        assert "auth        OFF" in banner, "the banner must say that auth is off"

        [gateway_pid] = _pids_running("gateway", "--port", str(port))
        os.kill(gateway_pid, signal.SIGKILL)
        wait_for_sync(lambda: _pids_running("gateway", "--port", str(port)) not in ([], [gateway_pid]))
        wait_for_sync(lambda: _get_status(readyz) == 200, timeout_s=30)
    finally:
        stop.set()
        runner.join(timeout=30)
    assert result == [0]
    assert _pids_running("gateway", "--port", str(port)) == []


async def test_settings_fixture_points_at_migrated_stores_with_its_own_namespace(settings: Settings) -> None:
    assert settings.key_prefix.startswith("t") and settings.stream_key == f"{settings.key_prefix}:stream"
    assert settings.database_url is not None and settings.redis_url is not None
    assert psql(settings.database_url, "SELECT count(*) > 0 FROM schema_migrations").strip() == "t"
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_wait_for_returns_the_value_and_explains_a_timeout() -> None:
    calls: list[int] = []

    async def third_time_lucky() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert await wait_for(third_time_lucky, timeout_s=5) == 3

    def never() -> bool:
        raise AssertionError("still 0 rows")

    with pytest.raises(AssertionError, match=r"timed out after 0.1s waiting for: .*never.*still 0 rows"):
        await wait_for(never, timeout_s=0.1)
