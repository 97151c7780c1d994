"""The `notiflow keys`, `notiflow token` and `notiflow secrets-init` commands (parsers and bodies;
cli.py dispatches)."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import orjson

from notiflow.config import Settings
from notiflow.credentials import issue_token, new_api_key, parse_scopes
from notiflow.errors import ApiError


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", parents=[common], help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="keys_action", required=True)
    create = actions.add_parser("create", help="create a key; it is printed once and never shown again")
    create.add_argument("--name", required=True, help="unique among live keys: 1-64 of [A-Za-z0-9._-]")
    create.add_argument("--scopes", required=True, help="comma-separated: send, read, admin")
    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = actions.add_parser("revoke", help="revoke the live key of that name, on every gateway at once")
    revoke.add_argument("name")
    token = sub.add_parser("token", parents=[common], help="sign an end-user token with NOTIFLOW_JWT_SECRET")
    token.add_argument("user_id")
    token.add_argument("--ttl-s", type=float, default=3600.0, help="lifetime in seconds (default 3600)")
    init = sub.add_parser("secrets-init", help="write a JWT secret and a bootstrap admin key into DIR, once")
    init.add_argument("dir", type=Path, help="read back by the platform with NOTIFLOW_SECRETS_DIR=DIR")


def _print(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from notiflow.worker.factory import key_service

    try:
        scopes = parse_scopes(args.scopes) if args.keys_action == "create" else frozenset()
    except ValueError as exc:
        print(f"notiflow: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        async with key_service(settings) as keys:
            if args.keys_action == "create":
                created = await keys.create(args.name, scopes)
                _print(created)
                print("notiflow: this key is shown once; only its hash is stored", file=sys.stderr)
                return 0
            if args.keys_action == "list":
                _print(await keys.list(include_revoked=args.all))
                return 0
            if await keys.revoke(args.name):
                _print({"revoked": args.name})
                return 0
            print(f"notiflow: no live key named {args.name!r}", file=sys.stderr)
            return 1

    try:
        return asyncio.run(main())
    except ApiError as exc:
        print(f"notiflow: {exc.message}", file=sys.stderr)
        return 1


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    try:
        print(issue_token(settings, args.user_id, args.ttl_s))
    except ValueError as exc:
        print(f"notiflow: {exc}", file=sys.stderr)
        return 2
    return 0


def _write_once(path: Path, value: str) -> bool:
    """Create ``path`` (owner-only) holding ``value``; False when it already exists (left as it is)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(value)
    return True


def cmd_secrets_init(args: argparse.Namespace) -> int:
    """Files named as pydantic-settings' secrets_dir reads them (``notiflow_<setting>``); idempotent, so
    a deployment can run it at every start (docker-compose.yml does). The admin key is printed only when
    it is created."""
    folder: Path = args.dir
    folder.mkdir(parents=True, exist_ok=True)
    _write_once(folder / "notiflow_jwt_secret", secrets.token_urlsafe(48))
    key = new_api_key()
    if _write_once(folder / "notiflow_api_keys", key):
        print(f"bootstrap admin key (every scope; kept in {folder / 'notiflow_api_keys'}): {key}")
    else:
        print(f"secrets already in {folder}; nothing changed")
    return 0
