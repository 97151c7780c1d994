"""Wiring: build a worker or service with its adapters, and close them all afterwards (the stores are opened
by service/wiring.py's ``open_stores``, as the gateway's are)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from notiflow import roles
from notiflow.config import Settings
from notiflow.health import Health
from notiflow.lifecycle import RELEASE_S
from notiflow.service.auth import KeyService
from notiflow.service.clock import Clock, RecordClock, SystemClock
from notiflow.service.delivery import DeliveryService
from notiflow.service.expansion import Expander
from notiflow.service.ports import Record, Wrappers
from notiflow.service.queries import QueryService
from notiflow.service.receipts import ReceiptSender
from notiflow.service.reconciler import Reconciler
from notiflow.service.retention import RetentionService
from notiflow.service.telemetry import Telemetry
from notiflow.service.wiring import open_stores
from notiflow.store.pool import close_pool, connect_pool, pg_limits
from notiflow.streams.budget import HostBudget
from notiflow.streams.presence import Presence
from notiflow.streams.pubsub import Router
from notiflow.streams.stats import StatsBoard
from notiflow.streams.work import WorkStream
from notiflow.webhook import WebhookClient
from notiflow.worker.retry import RetryWorker
from notiflow.worker.stream import StreamWorker


@asynccontextmanager
async def _closing(webhooks: WebhookClient) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await webhooks.aclose()


async def _record_clock(pool: Record, local: Clock | None) -> RecordClock:
    """PostgreSQL's clock through ``local`` (this machine's by default), measured once before any work."""
    clock = RecordClock(pool, local or SystemClock())
    await clock.try_sync()
    return clock


@asynccontextmanager
async def stream_worker(
    settings: Settings, webhooks: WebhookClient | None = None, *, health: Health | None = None,
    local_clock: Clock | None = None, wrappers: Wrappers | None = None,
) -> AsyncIterator[StreamWorker]:
    """``webhooks``: the downstream client to call through (closed here whoever made it); by default one
    built from ``settings``. ``health``: what the worker's loop beats (its /healthz). ``local_clock``: this
    machine's clock, which the worker corrects to PostgreSQL's (service/clock.py); the system's by default.
    ``wrappers``: around the adapters built here (service/ports.py), none by default."""
    wrap = wrappers or Wrappers()
    async with open_stores(settings, pg_max=settings.pg_pool_max, role="stream-worker") as (pool, redis):
        webhooks = webhooks or WebhookClient(roles.webhooks(settings))
        worker = roles.worker(settings)  # what the worker and its services get: their own part of the settings
        record, work = wrap.record(pool), wrap.work(WorkStream(redis, settings))
        try:
            clock = await _record_clock(record, local_clock)
            deliveries = DeliveryService(
                settings=worker, pool=record, work=work, presence=wrap.presence(Presence(redis, settings)),
                router=wrap.routes(Router(redis, settings)), webhooks=webhooks, budget=HostBudget(redis, settings),
                clock=clock,
            )
            telemetry = Telemetry(settings=worker, work=work, pool=record, board=StatsBoard(redis, settings),
                                  role="stream-worker", read_stores=False)
            yield StreamWorker(settings=worker, deliveries=deliveries, work=work, telemetry=telemetry, clock=clock,
                               health=health, topics=Expander(settings=worker, pool=record, work=work))
        finally:
            await webhooks.aclose()


@asynccontextmanager
async def retry_worker(
    settings: Settings, *, health: Health | None = None, local_clock: Clock | None = None,
    wrappers: Wrappers | None = None, webhooks: WebhookClient | None = None,
) -> AsyncIterator[RetryWorker]:
    """``local_clock``: this machine's clock, which the worker corrects to PostgreSQL's (service/clock.py).
    ``wrappers``: around the adapters built here (service/ports.py), none by default. ``webhooks``: the client
    delivery receipts are posted through (closed here whoever made it); by default one built from ``settings``."""
    wrap = wrappers or Wrappers()
    hooks = webhooks or WebhookClient(roles.webhooks(settings))
    async with _closing(hooks), open_stores(settings, pg_max=3, role="retry-worker") as (pool, redis):
        record, work = wrap.record(pool), wrap.work(WorkStream(redis, settings))
        worker = roles.worker(settings)  # what the worker and its services get: their own part of the settings
        telemetry = Telemetry(settings=worker, work=work, pool=record, board=StatsBoard(redis, settings),
                              role="retry-worker", read_stores=True)
        clock = await _record_clock(record, local_clock)
        yield RetryWorker(
            settings=worker, work=work, reconciler=Reconciler(settings=worker, pool=record, work=work),
            telemetry=telemetry, retention=RetentionService(roles.retention(settings), record), clock=clock,
            health=health, receipts=ReceiptSender(settings=worker, pool=record, webhooks=hooks,
                                                  budget=HostBudget(redis, settings)),
        )


@asynccontextmanager
async def query_service(settings: Settings) -> AsyncIterator[QueryService]:
    async with open_stores(settings, pg_max=2, role="cli") as (pool, redis):
        yield QueryService(settings=roles.gateway(settings), pool=pool, work=WorkStream(redis, settings))


@asynccontextmanager
async def key_service(settings: Settings) -> AsyncIterator[KeyService]:
    pool = await connect_pool(settings.database_url_required, max_size=1, **pg_limits(settings))
    try:
        yield KeyService(pool)
    finally:
        await close_pool(pool, RELEASE_S)
