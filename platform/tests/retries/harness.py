"""The platform in-process, for the retry/DLQ tests.

The gateway runs under a real uvicorn server on a free loopback port; stream and retry workers run as
asyncio tasks with their own stop events, each built by the production factories (own pools, own Redis
clients, own consumer names). Everything talks to the session's real Redis and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
import uvicorn
from helpers import wait_for

from notiflow.config import Settings
from notiflow.devstack import free_port
from notiflow.gateway.app import create_app, stop_serving
from notiflow.service.clock import Clock
from notiflow.service.ports import Wrappers
from notiflow.service.reconciler import Reconciler
from notiflow.streams.work import WorkStream
from notiflow.webhook import WebhookClient
from notiflow.worker.factory import retry_worker, stream_worker
from notiflow.worker.retry import RetryWorker
from notiflow.worker.stream import StreamWorker

#: Short schedules, so that a delivery runs through all its retries in about a second. Tests that check
#: timing bounds set their own.
FAST = {
    "max_retries": 3,
    "retry_base_ms": 50,
    "retry_cap_ms": 200,
    "retry_poll_ms": 20,
    "worker_block_ms": 50,
    "webhook_timeout_s": 2.0,
    "shutdown_grace_s": 1.0,
    "reconcile_interval_s": 0.3,
}


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process keeps its own signal handlers
        yield


@dataclass
class _Running:
    name: str
    stop: asyncio.Event
    task: asyncio.Task[None]
    worker: StreamWorker | RetryWorker
    exit: contextlib.AsyncExitStack


@dataclass
class Platform:
    """One gateway and any number of workers, in this process."""

    settings: Settings
    http: httpx.AsyncClient
    db: asyncpg.Pool
    redis: aioredis.Redis
    _exit: contextlib.AsyncExitStack
    workers: dict[str, _Running] = field(default_factory=dict)

    # --- processes --------------------------------------------------------------------------

    async def start_stream_worker(
        self, *, wrappers: Wrappers | None = None,
        webhooks: Callable[[Settings], WebhookClient] | None = None, local_clock: Clock | None = None,
        **overrides: Any,
    ) -> StreamWorker:
        """A stream worker; ``wrappers`` go around its adapters (to inject a fault there); ``webhooks``
        builds the downstream client it calls through (a faulty one, to inject a fault there);
        ``local_clock`` is its machine's clock (the system's by default)."""
        factory: Callable[..., Any] = stream_worker
        if webhooks is not None:
            make = webhooks
            factory = lambda s, **adapters: stream_worker(s, make(s), **adapters)  # noqa: E731
        worker = await self._start("stream", factory, overrides, wrappers, local_clock)
        assert isinstance(worker, StreamWorker)
        return worker

    async def start_retry_worker(self, *, local_clock: Clock | None = None, **overrides: Any) -> RetryWorker:
        worker = await self._start("retry", retry_worker, overrides, local_clock=local_clock)
        assert isinstance(worker, RetryWorker)
        return worker

    async def _start(
        self, role: str, factory: Callable[..., Any], overrides: dict[str, Any],
        wrappers: Wrappers | None = None, local_clock: Clock | None = None,
    ) -> StreamWorker | RetryWorker:
        name = f"{role}-{len(self.workers)}-{secrets.token_hex(3)}"
        settings = self.settings.model_copy(update={**overrides, "node_id": name})
        exit_stack = contextlib.AsyncExitStack()
        worker = await exit_stack.enter_async_context(factory(settings, local_clock=local_clock, wrappers=wrappers))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop), name=name)
        self.workers[name] = _Running(name, stop, task, worker, exit_stack)
        return worker  # type: ignore[no-any-return]

    async def stop_workers(self, role: str | None = None) -> None:
        """Stop (gracefully) every worker, or those of one role ("stream" / "retry")."""
        names = [n for n in self.workers if role is None or n.startswith(role)]
        for name in names:
            self.workers[name].stop.set()
        for name in names:
            running = self.workers.pop(name)
            await asyncio.wait_for(asyncio.gather(running.task, return_exceptions=True), timeout=15)
            await running.exit.aclose()

    def crashed(self) -> dict[str, BaseException]:
        """Workers whose task ended with an exception (a worker must never die of an entry)."""
        return {
            n: r.task.exception()  # type: ignore[misc]
            for n, r in self.workers.items()
            if r.task.done() and not r.task.cancelled() and r.task.exception() is not None
        }

    # --- the API ----------------------------------------------------------------------------

    async def notify(self, **body: Any) -> uuid.UUID:
        """POST /notifications; asserts the 202 and returns the id."""
        body.setdefault("event", "test.event")
        body.setdefault("payload", {"k": "v"})
        resp = await self.http.post("/notifications", json=body)
        assert resp.status_code == 202, resp.text
        return uuid.UUID(resp.json()["id"])

    async def notify_batch(self, user_ids: list[str]) -> list[uuid.UUID]:
        """POST /notifications/batch, one notification per user (committed together, so the stream gets
        them as one bundle of fresh work); asserts the 202 and returns the ids in order."""
        items = [{"event": "test.event", "payload": {"k": "v"}, "user_id": u} for u in user_ids]
        resp = await self.http.post("/notifications/batch", json={"notifications": items})
        assert resp.status_code == 202, resp.text
        return [uuid.UUID(r["id"]) for r in resp.json()["results"]]

    # --- the record -------------------------------------------------------------------------

    async def delivery(self, nid: uuid.UUID, user_id: str) -> asyncpg.Record:
        row = await self.db.fetchrow(
            "SELECT * FROM deliveries WHERE notification_id = $1 AND user_id = $2", nid, user_id
        )
        assert row is not None, f"no delivery {nid}/{user_id}"
        return row

    async def attempts(self, nid: uuid.UUID, user_id: str, channel: str = "webhook") -> list[asyncpg.Record]:
        return list(
            await self.db.fetch(
                "SELECT * FROM delivery_attempts WHERE notification_id = $1 AND user_id = $2 AND channel = $3"
                " ORDER BY id",
                nid, user_id, channel,
            )
        )

    async def dlq(self, nid: uuid.UUID | None = None) -> list[asyncpg.Record]:
        return list(
            await self.db.fetch(
                "SELECT * FROM dlq WHERE $1::uuid IS NULL OR notification_id = $1 ORDER BY id", nid
            )
        )

    async def webhook_status(self, nid: uuid.UUID, user_id: str) -> str:
        return str((await self.delivery(nid, user_id))["webhook_status"])

    async def wait_webhook(self, nid: uuid.UUID, users: list[str], status: str, timeout_s: float = 20) -> None:
        async def reached() -> bool:
            got = {u: await self.webhook_status(nid, u) for u in users}
            assert all(s == status for s in got.values()), got
            return True

        await wait_for(reached, timeout_s, interval_s=0.05)

    async def stream_length(self) -> int:
        return int(await self.redis.xlen(self.settings.stream_key))

    async def close(self) -> dict[str, BaseException]:
        """Workers first, then the gateway and the clients; returns the workers that had died."""
        crashed = self.crashed()
        await self.stop_workers()
        await self._exit.aclose()
        return crashed


async def start_platform(
    base: Settings, *, stream_workers: int = 1, retry_workers: int = 1, **overrides: Any
) -> Platform:
    """A gateway on a free port and the workers, on ``base`` with ``overrides``."""
    settings = base.model_copy(update={**overrides, "port": free_port()})
    exit_stack = contextlib.AsyncExitStack()
    try:
        app = create_app(settings)
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port,
                                        log_config=None, lifespan="on", ws="none"))
        serving = asyncio.create_task(server.serve())

        async def stop_server() -> None:
            stop_serving(app, server)
            await asyncio.wait_for(serving, timeout=15)

        exit_stack.push_async_callback(stop_server)
        await wait_for(lambda: server.started or serving.done(), 15, message="gateway started")
        if serving.done():
            serving.result()  # re-raise why it could not start
        http = await exit_stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=10, trust_env=False)
        )
        db = await asyncpg.create_pool(settings.database_url_required, min_size=1, max_size=3)
        exit_stack.push_async_callback(db.close)
        client = aioredis.from_url(settings.redis_url_required, decode_responses=True)
        exit_stack.push_async_callback(client.aclose)
    except BaseException:
        await exit_stack.aclose()
        raise
    plat = Platform(settings, http, db, client, exit_stack)
    try:
        # One reconciler round first, as on a platform that has been running: it finds no epoch in this
        # fresh namespace and "rebuilds" (nothing, on a clean database). Left to the retry worker, that
        # rebuild could race the test's first notifications and enqueue them twice.
        await Reconciler(settings=settings, pool=db, work=WorkStream(client, settings)).run_once()
        for _ in range(stream_workers):
            await plat.start_stream_worker()
        for _ in range(retry_workers):
            await plat.start_retry_worker()
    except BaseException:
        await plat.close()
        raise
    return plat


PlatformFactory = Callable[..., Awaitable[Platform]]
