"""Wiring: build a worker or service with its adapters, and close them all afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from notiflow.config import Settings
from notiflow.service.delivery import DeliveryService
from notiflow.service.queries import QueryService
from notiflow.service.reconciler import Reconciler
from notiflow.store.pool import connect_pool
from notiflow.streams.budget import HostBudget
from notiflow.streams.client import connect_redis
from notiflow.streams.presence import Presence
from notiflow.streams.pubsub import Router
from notiflow.streams.work import WorkStream
from notiflow.webhook import WebhookClient
from notiflow.worker.retry import RetryWorker
from notiflow.worker.stream import StreamWorker


@asynccontextmanager
async def stream_worker(settings: Settings) -> AsyncIterator[StreamWorker]:
    pool = await connect_pool(settings.database_url_required, max_size=settings.pg_pool_max)
    redis = connect_redis(settings.redis_url_required)
    webhooks = WebhookClient(settings)
    work = WorkStream(redis, settings)
    try:
        deliveries = DeliveryService(
            settings, pool, work, Presence(redis, settings), Router(redis, settings), webhooks,
            HostBudget(redis, settings),
        )
        yield StreamWorker(settings, deliveries, work)
    finally:
        await webhooks.aclose()
        await redis.aclose()
        await pool.close()


@asynccontextmanager
async def retry_worker(settings: Settings) -> AsyncIterator[RetryWorker]:
    pool = await connect_pool(settings.database_url_required, max_size=2)
    redis = connect_redis(settings.redis_url_required)
    work = WorkStream(redis, settings)
    try:
        yield RetryWorker(settings, work, Reconciler(settings, pool, work))
    finally:
        await redis.aclose()
        await pool.close()


@asynccontextmanager
async def query_service(settings: Settings) -> AsyncIterator[QueryService]:
    pool = await connect_pool(settings.database_url_required, max_size=2)
    redis = connect_redis(settings.redis_url_required)
    try:
        yield QueryService(settings, pool, WorkStream(redis, settings))
    finally:
        await redis.aclose()
        await pool.close()
