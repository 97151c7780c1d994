"""Fixtures of the integration tests: gateways, workers and clients in the test's own event loop, on the
session's real Redis and PostgreSQL (``stores`` and ``settings`` come from the parent conftest). Tests that
need a real SIGKILL use the parent conftest's ``stack`` (DevStack) instead. The building blocks are in
integration_support.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest_asyncio
import redis.asyncio as aioredis
from integration_support import Gateway, Gateways, Socket, SocketFactory, Workers, ws_base
from websockets.asyncio.client import connect

from notiflow.config import Settings
from notiflow.service.auth import KeyService
from notiflow.store.pool import connect_pool


@pytest_asyncio.fixture
async def gateways(settings: Settings) -> AsyncIterator[Gateways]:
    """``await gateways.start(**setting_overrides)`` starts a gateway node; all stop after the test."""
    nodes = Gateways(settings)
    try:
        yield nodes
    finally:
        await nodes.stop_all()


@pytest_asyncio.fixture
async def workers(settings: Settings) -> AsyncIterator[Workers]:
    """``await workers.stream()`` / ``await workers.retry()``; every worker stops after the test."""
    pool = Workers(settings)
    try:
        yield pool
    finally:
        await pool.stop_all()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        yield client


@pytest_asyncio.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A plain asyncpg pool on the test database, for assertions on the record itself."""
    pool = await asyncpg.create_pool(settings.database_url_required, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture
async def rds(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url_required, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def socket() -> AsyncIterator[SocketFactory]:
    """``await socket(gateway_or_base_url, user_id, sync=True)`` opens a WebSocket client; with ``sync``
    it returns once the server routes the user's notifications to it. All are closed after the test."""
    opened: list[Socket] = []

    async def open_socket(target: Gateway | str, user_id: str, *, sync: bool = True, **kwargs: Any) -> Socket:
        conn = await connect(ws_base(target, user_id), open_timeout=10, proxy=None, **kwargs)
        sock = Socket(conn, user_id)
        opened.append(sock)
        if sync:
            await sock.sync()
        return sock

    yield open_socket
    for sock in opened:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sock.close(), timeout=5)


@pytest_asyncio.fixture
async def keys(settings: Settings) -> AsyncIterator[KeyService]:
    """API keys stored on the test's database (KeyService over a pool of its own)."""
    pool = await connect_pool(settings.database_url_required, max_size=2)
    try:
        yield KeyService(pool)
    finally:
        await pool.close()
