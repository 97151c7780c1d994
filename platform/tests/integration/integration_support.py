"""Building blocks of the integration tests: in-process gateways and workers, WebSocket clients, and
small helpers for requests and assertions on the record. The fixtures that use them are in conftest.py.

Everything runs against real Redis and PostgreSQL. A gateway is ``create_app(settings)`` under a real
uvicorn server on a free loopback port; a stream or retry worker is the production class built by
``notiflow.worker.factory``, run as a task with its stop event. Each gets a node id of its own, as
separate processes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI
from helpers import wait_for
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from notiflow.config import Settings
from notiflow.devstack import free_port
from notiflow.gateway.app import create_app, server_options, stop_serving
from notiflow.gateway.deps import Services
from notiflow.ids import new_id
from notiflow.service.ports import Wrappers
from notiflow.worker.factory import retry_worker, stream_worker


def dump_tasks(why: str) -> None:
    """Print the stack of every task of the running loop to stderr (pytest shows it with the failure)."""
    print(f"\n----- {why}: the loop's tasks -----", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=sys.stderr)


# --- gateways -------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the test process owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Gateway:
    """One in-process gateway node."""

    settings: Settings
    app: FastAPI
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def node_id(self) -> str:
        return self.settings.node_id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def ws_url(self, user_id: str) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/ws/{user_id}"

    @property
    def services(self) -> Services:
        svc = self.app.state.services
        assert isinstance(svc, Services)
        return svc

    async def stop(self) -> None:
        if self.task.done():
            return
        stop_serving(self.app, self.server)
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=self.settings.shutdown_grace_s + 10)
        except TimeoutError:
            # Where it hangs is what such a failure must show: every task's stack, with the failure.
            dump_tasks(f"gateway {self.node_id} did not stop within its grace + 10 s")
            raise


async def start_gateway(settings: Settings, wrappers: Wrappers | None = None) -> Gateway:
    """Serve ``create_app(settings, wrappers=wrappers)`` on ``settings.port``; returns once uvicorn has started
    (the lifespan, which opens the stores and subscribes to the node's channel, has completed)."""
    app = create_app(settings, wrappers=wrappers)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.port, **server_options(settings),
        log_config=None, lifespan="on", timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )  # fmt: skip
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name=f"gateway-{settings.node_id}")
    node = Gateway(settings, app, server, task)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not server.started:
        if task.done():
            task.result()  # raises what the server failed with
            raise AssertionError("gateway exited while starting")
        if loop.time() > deadline:
            await node.stop()
            raise AssertionError("gateway did not start within 30 s")
        await asyncio.sleep(0.01)
    return node


@dataclass
class Gateways:
    settings: Settings
    started: list[Gateway] = field(default_factory=list)

    async def start(self, *, wrappers: Wrappers | None = None, **overrides: Any) -> Gateway:
        """A gateway with these settings ``overrides``; ``wrappers``: faults around its adapters (tests/fakes.py)."""
        node_settings = self.settings.model_copy(
            update={"node_id": f"gw{len(self.started)}-{secrets.token_hex(3)}", "port": free_port(), **overrides}
        )
        node = await start_gateway(node_settings, wrappers)
        self.started.append(node)
        return node

    async def stop_all(self) -> None:
        for node in reversed(self.started):
            await node.stop()


# --- workers --------------------------------------------------------------------------------------


@dataclass
class RunningWorker:
    """A stream or retry worker running as a task until ``stop()``."""

    worker: Any
    stop_event: asyncio.Event
    task: asyncio.Task[None]
    node_id: str
    _exit: contextlib.AsyncExitStack

    async def stop(self) -> None:
        if self.stop_event.is_set():
            return
        self.stop_event.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=30)
        except TimeoutError:
            dump_tasks("a worker did not stop within 30 s")
            raise
        finally:
            await self._exit.aclose()

    def check(self) -> None:
        """Fail if the worker's loop ended by itself (a worker must survive store faults)."""
        if self.task.done() and not self.stop_event.is_set():
            raise AssertionError(f"worker {self.node_id} stopped by itself: {self.task.exception()!r}")


@dataclass
class Workers:
    settings: Settings
    running: list[RunningWorker] = field(default_factory=list)

    async def _start(
        self, kind: str, overrides: dict[str, Any], wrappers: Wrappers | None, webhooks: Any = None
    ) -> RunningWorker:
        node_id = f"{kind}{len(self.running)}-{secrets.token_hex(3)}"
        worker_settings = self.settings.model_copy(update={"node_id": node_id, **overrides})
        exit_stack = contextlib.AsyncExitStack()
        factory: Any = stream_worker if kind == "sw" else retry_worker
        args = (worker_settings, webhooks) if webhooks else (worker_settings,)
        worker: Any = await exit_stack.enter_async_context(factory(*args, wrappers=wrappers))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop), name=node_id)
        running = RunningWorker(worker, stop, task, node_id, exit_stack)
        self.running.append(running)
        return running

    async def stream(
        self, *, wrappers: Wrappers | None = None, webhooks: Any = None, **overrides: Any
    ) -> RunningWorker:
        """A stream worker (consumer name = its node id); ``wrappers``: faults around its adapters;
        ``webhooks``: the downstream client it calls through (one from its settings by default)."""
        return await self._start("sw", overrides, wrappers, webhooks)

    async def retry(self, *, wrappers: Wrappers | None = None, **overrides: Any) -> RunningWorker:
        """A retry worker, which also runs the reconciler."""
        return await self._start("rw", overrides, wrappers)

    async def stop_all(self) -> None:
        for w in reversed(self.running):
            await w.stop()


# --- WebSocket clients ----------------------------------------------------------------------------


class Socket:
    """A test client on /ws/{user_id}: collects notification frames, acks them, knows its close code."""

    def __init__(self, conn: ClientConnection, user_id: str) -> None:
        self.conn = conn
        self.user_id = user_id
        self.frames: list[dict[str, Any]] = []
        self.others: list[dict[str, Any]] = []

    @property
    def ids(self) -> set[str]:
        return {f["id"] for f in self.frames}

    async def recv(self, timeout_s: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), timeout=timeout_s)
        msg: dict[str, Any] = orjson.loads(raw)
        (self.frames if msg.get("type") == "notification" else self.others).append(msg)
        return msg

    async def sync(self, timeout_s: float = 10.0) -> None:
        """Ping and wait for the pong. The server reads frames only once the socket is in its hub and in
        presence, so after the pong the cluster routes this user's notifications here."""
        await self.conn.send('{"type":"ping"}')
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (await self.recv(max(0.01, deadline - loop.time()))).get("type") != "pong":
            pass

    async def wait_ids(self, ids: Iterable[str], timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Receive until every id in ``ids`` has arrived; the frames of those ids, in arrival order."""
        want = set(ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not want <= self.ids:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{self.user_id}: frames never arrived: {sorted(want - self.ids)}")
            try:
                await self.recv(left)
            except TimeoutError:
                continue
        return [f for f in self.frames if f["id"] in want]

    async def quiet(self, period_s: float) -> list[dict[str, Any]]:
        """Whatever arrives within ``period_s`` (used to show that nothing does)."""
        before = len(self.frames)
        with contextlib.suppress(TimeoutError):
            while True:
                await self.recv(period_s)
        return self.frames[before:]

    async def ack(self, ids: Iterable[str], ref: object = None) -> None:
        """An ack frame; with ``ref`` (anything but None, bad values included) it asks for an answer."""
        frame: dict[str, object] = {"type": "ack", "ids": list(ids)}
        if ref is not None:
            frame["ref"] = ref
        await self.conn.send(orjson.dumps(frame).decode())

    async def close_code(self, timeout_s: float = 10.0) -> int | None:
        """Read until the server closes the socket; the close code it sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                await self.recv(max(0.01, deadline - loop.time()))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None

    async def close(self) -> None:
        await self.conn.close()


SocketFactory = Callable[..., Awaitable[Socket]]


def ws_base(target: Gateway | str, user_id: str) -> str:
    if isinstance(target, Gateway):
        return target.ws_url(user_id)
    return f"{target.replace('http://', 'ws://', 1)}/ws/{user_id}"


# --- Redis faults ---------------------------------------------------------------------------------


async def wipe_namespace(rds: aioredis.Redis, settings: Settings) -> int:
    """What a Redis restart without persistence (or a FLUSHALL) does to one test: every key it owns is
    gone, the stream and its consumer group included. The server may be shared, so only our keys go."""
    keys = [k async for k in rds.scan_iter(match=f"{settings.key_prefix}:*", count=1000)]
    keys.append(settings.stream_key)
    return int(await rds.delete(*keys))


# --- requests and the record ----------------------------------------------------------------------


def users(n: int, tag: str = "u") -> list[str]:
    """``n`` fresh user ids, unique to this call."""
    run = secrets.token_hex(3)
    return [f"{tag}-{run}-{i}" for i in range(n)]


async def post(
    http: httpx.AsyncClient,
    base_url: str,
    body: Any,
    *,
    key: str | None = None,
    expect: int | None = 202,
) -> httpx.Response:
    headers = {"idempotency-key": key} if key is not None else {}
    response = await http.post(f"{base_url}/notifications", json=body, headers=headers)
    if expect is not None:
        assert response.status_code == expect, response.text
    return response


async def notify(http: httpx.AsyncClient, base_url: str, user_ids: list[str], **extra: Any) -> str:
    """POST one notification to ``user_ids``; its id (checked to be a UUID)."""
    body: dict[str, Any] = {"user_ids": user_ids, "event": "test.event", "payload": {}, **extra}
    response = await post(http, base_url, body)
    answer = response.json()
    assert answer["status"] == "accepted" and answer["recipients"] == len(user_ids), answer
    return str(uuid.UUID(answer["id"]))


async def insert_pending(db: asyncpg.Pool | asyncpg.Connection, users: list[str]) -> uuid.UUID:
    """A notification with one pending delivery per user (seq 1), written straight into the record (in today's
    partitions, as ingest writes them)."""
    nid = new_id()
    await db.execute(
        "INSERT INTO notifications (id, event, payload, recipients, expires_at, era) "
        "VALUES ($1, 'e', '{}', $2, now() + interval '1 day', notiflow_era($1))", nid, len(users)
    )
    await db.executemany(
        "INSERT INTO deliveries (notification_id, user_id, seq, era) VALUES ($1, $2, 1, notiflow_era($1))",
        [(nid, u) for u in users],
    )
    return nid


async def statuses(db: asyncpg.Pool, nid: str) -> dict[str, str]:
    """user_id -> socket-channel status of one notification's deliveries."""
    rows = await db.fetch("SELECT user_id, status FROM deliveries WHERE notification_id = $1", uuid.UUID(nid))
    return {r["user_id"]: r["status"] for r in rows}


async def settled(db: asyncpg.Pool, nid: str, timeout_s: float = 10.0) -> dict[str, str]:
    """Wait until no delivery of ``nid`` is pending (a worker recorded its outcome); their statuses."""
    async def done() -> dict[str, str]:
        found = await statuses(db, nid)
        return found if found and "pending" not in found.values() else {}

    result: dict[str, str] = await wait_for(done, timeout_s=timeout_s, message=f"deliveries of {nid} processed")
    return result


async def status_of(db: asyncpg.Pool, nid: str, user_id: str) -> str | None:
    value = await db.fetchval(
        "SELECT status FROM deliveries WHERE notification_id = $1 AND user_id = $2", uuid.UUID(nid), user_id
    )
    return None if value is None else str(value)


async def offline_page(http: httpx.AsyncClient, base_url: str, user_id: str, **params: Any) -> dict[str, Any]:
    response = await http.get(f"{base_url}/notifications/offline/{user_id}", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def offline_ids(http: httpx.AsyncClient, base_url: str, user_id: str, limit: int = 1000) -> list[str]:
    page = await offline_page(http, base_url, user_id, limit=limit)
    return [n["id"] for n in page["notifications"]]


async def table_counts(db: asyncpg.Pool) -> dict[str, int]:
    """Rows in every table that ingestion or processing writes."""
    out: dict[str, int] = {}
    for table in ("notifications", "deliveries", "user_seqs", "delivery_attempts", "dlq"):
        out[table] = int(await db.fetchval(f"SELECT count(*) FROM {table}"))
    # Keys, not rows: a key is stored on its day and guarded on the next (migration 013).
    out["idempotency_keys"] = int(await db.fetchval("SELECT count(DISTINCT (scope, key)) FROM idempotency_keys"))
    return out
