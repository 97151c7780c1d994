"""SQL of API keys: create, list, revoke, and the per-request lookup by hash."""

from __future__ import annotations

from typing import Any

_INSERT = """
INSERT INTO api_keys (name, key_hash, prefix, scopes) VALUES ($1, $2, $3, $4::text[])
ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING
RETURNING id, name, prefix, scopes, created_at
"""
_LIST = """
SELECT id, name, prefix, scopes, created_at, revoked_at FROM api_keys
WHERE $1 OR revoked_at IS NULL ORDER BY name, id
"""
_REVOKE = "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id"
# One statement for every lookup a gateway has queued (see service/auth.py): live keys only, so a
# revocation is seen by the very next request on every gateway.
_LOOKUP = """
SELECT id, name, key_hash, scopes FROM api_keys
WHERE key_hash = ANY($1::text[]) AND revoked_at IS NULL
"""
_ANY_LIVE = "SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)"


async def insert_key(conn: Any, name: str, digest: str, prefix: str, scopes: list[str]) -> dict[str, Any] | None:
    """The new key's row, or None when a live key already has that name."""
    row = await conn.fetchrow(_INSERT, name, digest, prefix, scopes)
    return dict(row) if row is not None else None


async def list_keys(conn: Any, *, include_revoked: bool) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_LIST, include_revoked)]


async def revoke_key(conn: Any, name: str) -> bool:
    return await conn.fetchval(_REVOKE, name) is not None


async def live_keys_by_hash(conn: Any, digests: list[str]) -> dict[str, dict[str, Any]]:
    """hash -> row of each live key among ``digests``."""
    return {r["key_hash"]: dict(r) for r in await conn.fetch(_LOOKUP, digests)}


async def any_live_key(conn: Any) -> bool:
    return bool(await conn.fetchval(_ANY_LIVE))
