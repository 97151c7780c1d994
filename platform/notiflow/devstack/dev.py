"""`notiflow dev`: a DevStack (stack.py) run until stopped, its children restarted when they die, and a banner
that says where everything is and how to try it."""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from notiflow.config import Settings
from notiflow.devstack._proc import DevStackError
from notiflow.devstack.stack import DevStack

__all__ = ["DevCredentials", "run_dev"]

log = logging.getLogger(__name__)


def _auth_on(settings: Settings) -> bool:
    """The rule DevStack applies to its children (see ``_AUTH_VARS`` in stack.py), read from the settings."""
    return settings.auth == "on" or (settings.auth is None and settings.auth_configured)


@dataclass(frozen=True, slots=True)
class DevCredentials:
    """What `notiflow dev --auth` hands its user: an admin API key and a user's token."""

    admin_key: str
    user_id: str
    user_token: str


def _dev_credentials(settings: Settings, database_url: str) -> DevCredentials:
    import asyncio

    from notiflow.credentials import ALL_SCOPES, issue_token
    from notiflow.worker.factory import key_service

    async def admin_key() -> str:
        async with key_service(settings.model_copy(update={"database_url": database_url})) as keys:
            await keys.revoke("dev-admin")  # a kept workdir may hold one from an earlier run
            created = await keys.create("dev-admin", ALL_SCOPES)
            return str(created["key"])

    return DevCredentials(asyncio.run(admin_key()), "alice", issue_token(settings, "alice", ttl_s=24 * 3600))


def _notiflow_command() -> str:
    """This installation's ``notiflow``, as a shell can run it: a venv's bin is not on PATH."""
    script = Path(sys.executable).parent / "notiflow"
    if not script.exists():
        return "notiflow"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


def _banner(stack: DevStack, creds: DevCredentials | None = None) -> str:
    first = stack.gateway_urls[0]
    auth = "" if creds is None else f" -H 'authorization: Bearer {creds.admin_key}'"
    lines = ["", "notiflow dev is up", ""]
    lines += [f"  gateway     {url}" for url in stack.gateway_urls]
    lines += [
        f"  redis       {stack.redis_url}" + ("  (embedded)" if stack.embedded_redis else "")
        + (f"  (embedded cluster: ports {stack.embedded_cluster.ports}, partitions "
           f"{stack.settings.stream_partitions})" if stack.embedded_cluster else ""),
        f"  postgresql  {stack.database_url}" + ("  (embedded)" if stack.embedded_postgres else ""),
        f"  processes   {', '.join(stack.process_names)}",
        *(f"  metrics     {name:<16} {url}" for name, url in stack.metrics_urls.items()),
        f"  dashboard   {first}/dashboard",
        f"  logs        {stack.log_dir}",
    ]
    if creds is not None:
        lines += [
            "  auth        ON (JWT HS256 + API keys)",
            f"  admin key   {creds.admin_key}   (scopes send, read, admin; shown once)",
            f"  user token  {creds.user_token}   (sub {creds.user_id}, 24 h)",
        ]
    elif _auth_on(stack.settings):
        lines.append("  auth        ON (from your NOTIFLOW_* settings)")
    else:
        lines.append("  auth        OFF: anyone can send, read and delete (`notiflow dev --auth` turns it on)")
    user_auth = "" if creds is None else f" -H 'authorization: Bearer {creds.user_token}'"
    notiflow = _notiflow_command()
    tail_token = "" if creds is None else f" --token {creds.user_token}"
    send_token = "" if creds is None else f" --token {creds.admin_key}"
    lines += [
        "",
        "Try (the socket side in one terminal, the sending side in another):",
        f"  {notiflow} tail alice --url {first}{tail_token}",
        f"  {notiflow} send alice hello '{{\"text\": \"hi\"}}' --url {first}{send_token}",
        "Or over plain HTTP:",
        f"  curl -X POST {first}/notifications -H 'content-type: application/json'{auth} \\",
        """       -d '{"user_id":"alice","event":"hello","payload":{"text":"hi"}}'""",
        f"  curl {first}/notifications/offline/alice{user_auth}",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


# A child that dies this often within the window is crash-looping: stop instead of restarting forever.
_MAX_RESTARTS = 5
_RESTART_WINDOW_S = 60.0


def run_dev(
    settings: Settings,
    *,
    gateways: int,
    stream_workers: int,
    retry_workers: int,
    stop: threading.Event,
    workdir: Path | None = None,
    auth: bool = False,
    redis_cluster: int = 0,
) -> int:
    """Run a DevStack until ``stop`` is set; restart children that die. Returns the exit code.

    ``auth``: authentication on, with a fresh JWT secret unless one is set, and a new admin key."""
    workdir = Path.cwd() / ".notiflow" / "dev" if workdir is None else workdir
    settings = _dev_settings(settings, auth)
    stack = DevStack(
        settings,
        gateways=gateways,
        stream_workers=stream_workers,
        retry_workers=retry_workers,
        workdir=workdir,
        redis_cluster=redis_cluster,
    )
    try:
        stack.start()
    except DevStackError as exc:
        log.error("notiflow dev failed to start: %s", exc)
        return 1
    try:
        creds = _dev_credentials(settings, stack.database_url) if auth else None
    except Exception:
        stack.stop()
        raise
    print(_banner(stack, creds), flush=True)
    try:
        return _supervise(stack, stop)
    finally:
        stack.stop()


def _dev_settings(settings: Settings, auth: bool) -> Settings:
    """``settings`` as `notiflow dev` runs them: ``auth`` on with a JWT secret, private webhook targets allowed."""
    if auth:
        secret = settings.jwt_secret or SecretStr(secrets.token_urlsafe(32))
        settings = settings.model_copy(update={"auth": "on", "jwt_secret": secret})
    if "NOTIFLOW_WEBHOOK_ALLOW_PRIVATE" not in os.environ:
        # On a developer's machine the downstream is usually on loopback too.
        settings = settings.model_copy(update={"webhook_allow_private": True})
    return settings


def _supervise(stack: DevStack, stop: threading.Event) -> int:
    """Restart each child that exits until ``stop`` is set (0), or until one crash-loops (1; sets ``stop``)."""
    restarts: dict[str, list[float]] = {}
    while not stop.wait(0.2):
        for name in stack.supervisor.unexpected_exits():
            now = time.monotonic()
            recent = [t for t in restarts.get(name, []) if now - t < _RESTART_WINDOW_S] + [now]
            restarts[name] = recent
            returncode = stack.supervisor.returncode(name)
            if len(recent) > _MAX_RESTARTS:
                log.error(
                    "%s exited with %s %d times in %.0fs; giving up (log %s)",
                    name, returncode, len(recent), _RESTART_WINDOW_S, stack.supervisor.log_path(name),
                )  # fmt: skip
                stop.set()
                return 1
            log.warning(
                "%s exited unexpectedly with %s; restarting it (log %s)",
                name, returncode, stack.supervisor.log_path(name),
            )  # fmt: skip
            stack.start_process(name, wait=False)
    return 0
