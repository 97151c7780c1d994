"""Authentication and API key management: who a bearer token is, and the keys operators hand out.

A stored API key is looked up on every request, never cached: a key revoked with `notiflow keys revoke`
stops working on every gateway with the next request. Lookups arriving together share one statement
(group lookup, like ingest's group commit), so the cost under load is one indexed query per batch.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from notiflow.batching import Batcher
from notiflow.credentials import (
    ANONYMOUS,
    KEY_NAME_RE,
    KEY_PREFIX,
    Principal,
    Scope,
    TokenVerifier,
    bootstrap_principals,
    key_hash,
    looks_like_jwt,
    match_bootstrap,
    new_api_key,
)
from notiflow.errors import ApiError, AuthNotConfigured, Unauthorized
from notiflow.roles import AuthSettings
from notiflow.service.ports import Record
from notiflow.store import api_keys as sql
from notiflow.store.pool import pg_errors

log = logging.getLogger(__name__)

_PREFIX_SHOWN = len(KEY_PREFIX) + 6


class AuthService:
    """Turns a bearer token (or none) into a Principal. One per gateway process."""

    def __init__(self, settings: AuthSettings, pool: Record) -> None:
        self._s = settings
        self.off = settings.auth == "off"
        self._pool = pool
        try:
            self._tokens = TokenVerifier(settings)
        except ValueError as exc:  # a short secret or an unusable PEM: refuse to start, saying which
            raise AuthNotConfigured(str(exc)) from None
        self._bootstrap = bootstrap_principals([k.get_secret_value() for k in settings.api_keys])
        self._lookups: Batcher[str, Principal | None] = Batcher(self._lookup, max_batch=500, name="api-keys")

    async def start(self) -> None:
        """Refuse to run with authentication on and no way to authenticate anyone."""
        if not self.off and not self._s.auth_configured:
            async with pg_errors("api keys"), self._pool.acquire() as conn:
                if not await sql.any_live_key(conn):
                    raise AuthNotConfigured(
                        "no authentication is configured: set NOTIFLOW_JWT_SECRET or NOTIFLOW_JWT_PUBLIC_KEY, "
                        "NOTIFLOW_API_KEYS, or create a key with `notiflow keys create`; or set NOTIFLOW_AUTH=off "
                        "to run with no authentication at all"
                    )
        self._lookups.start()

    async def close(self, grace_s: float) -> None:
        await self._lookups.close(grace_s)

    async def authenticate(self, token: str | None) -> Principal:
        """The caller behind ``token``; Unauthorized when it is missing or not valid. Auth off: anyone."""
        if self.off:
            return ANONYMOUS
        if not token:
            raise Unauthorized("credentials are required: Authorization: Bearer <token or API key>")
        if looks_like_jwt(token):
            if not self._tokens.enabled:
                raise Unauthorized("end-user tokens are not accepted here (no JWT key)", code="invalid_token")
            return self._tokens.verify(token)
        if found := match_bootstrap(token, self._bootstrap):
            return found
        if not token.startswith(KEY_PREFIX):
            raise Unauthorized("unknown API key", code="invalid_key")
        principal = await self._lookups.submit(key_hash(token))
        if principal is None:
            raise Unauthorized("unknown or revoked API key", code="invalid_key")
        return principal

    async def _lookup(self, digests: list[str]) -> list[Principal | BaseException | None]:
        async with pg_errors("api key lookup"), self._pool.acquire() as conn:
            rows = await sql.live_keys_by_hash(conn, sorted(set(digests)))
        return [_key_principal(rows.get(d), d) for d in digests]


def _key_principal(row: dict[str, Any] | None, digest: str) -> Principal | None:
    # The row was found by equality on the hash; comparing again in constant time keeps the rule
    # "secrets are compared with compare_digest" true on every path (the lookup itself only ever
    # learns about the hash of what the caller sent, which tells an attacker nothing).
    if row is None or not hmac.compare_digest(row["key_hash"], digest):
        return None
    scopes = frozenset(Scope(s) for s in row["scopes"])
    return Principal("key", row["name"], scopes, idempotency_scope=f"key:{row['id']}")


class KeyService:
    """The key management use cases behind `notiflow keys`."""

    def __init__(self, pool: Record) -> None:
        self._pool = pool

    async def create(self, name: str, scopes: frozenset[Scope]) -> dict[str, Any]:
        """A new key: its row, and the key itself (shown this once, never stored)."""
        if not KEY_NAME_RE.match(name):
            raise ApiError(422, "invalid_key_name", "a key name is 1-64 characters of [A-Za-z0-9._-]")
        key = new_api_key()
        async with pg_errors("create api key"), self._pool.acquire() as conn:
            row = await sql.insert_key(conn, name, key_hash(key), key[:_PREFIX_SHOWN], sorted(scopes))
        if row is None:
            raise ApiError(409, "key_name_taken", f"a live key is already named {name!r}; revoke it first")
        return {**row, "key": key}

    async def list(self, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        async with pg_errors("list api keys"), self._pool.acquire() as conn:
            return await sql.list_keys(conn, include_revoked=include_revoked)

    async def revoke(self, name: str) -> bool:
        """True when a live key of that name was revoked (False: there was none)."""
        async with pg_errors("revoke api key"), self._pool.acquire() as conn:
            revoked = await sql.revoke_key(conn, name)
        if revoked:
            log.info("api key revoked", extra={"key_name": name})
        return revoked
