"""Every process exports its metrics (gateways on their HTTP port, workers on NOTIFLOW_METRICS_PORT),
and the figures move when notifications flow: accepted, frames, latency, acks, attempts, webhook calls,
retries, the DLQ and the store gauges."""

from __future__ import annotations

import asyncio
import base64
import uuid

import httpx
import orjson
import pytest
from helpers import wait_for
from pydantic import SecretStr
from scrape import names, scrape, total
from websockets.asyncio.client import connect

from notiflow import metrics
from notiflow.devstack import free_port
from notiflow.errors import StoreUnavailable
from notiflow.store.pool import pg_errors
from notiflow.streams.client import redis_errors

SECRET = SecretStr("whsec_" + base64.b64encode(b"dashboard-test-secret-32-bytes!!").decode())
pytestmark = pytest.mark.timeout(120)

GATEWAY = {
    "notiflow_http_requests_total", "notiflow_notifications_accepted_total", "notiflow_notifications_refused_total",
    "notiflow_ingest_seconds_bucket", "notiflow_websockets", "notiflow_connected_users",
    "notiflow_ws_frames_sent_total", "notiflow_acks_total", "notiflow_delivery_latency_seconds_bucket",
    "notiflow_stream_length", "notiflow_stream_pending", "notiflow_consumer_group_lag", "notiflow_retry_scheduled",
    "notiflow_dlq_entries",
}
STREAM_WORKER = {"notiflow_delivery_attempts_total", "notiflow_stream_entries_processed_total",
                 "notiflow_webhook_call_seconds_bucket"}
RETRY_WORKER = {"notiflow_retries_moved_total", "notiflow_stream_length", "notiflow_retry_scheduled",
                "notiflow_dlq_entries"}


async def test_every_process_exports_metrics_that_move(stack) -> None:  # type: ignore[no-untyped-def]
    dead_port = free_port()  # nothing listens: every webhook call fails and is retried, then dead-lettered
    dev = stack(webhook_allowed_hosts=[f"127.0.0.1:{dead_port}"], webhook_secret=SECRET,
                webhook_allow_private=True, max_retries=1, stats_interval_s=0.2)
    gw = dev.gateway_urls[0]
    urls = dev.metrics_urls
    assert set(urls) == {"gateway-0", "stream-worker-0", "retry-worker-0"}
    assert urls["gateway-0"] == f"{gw}/metrics"
    user = f"m-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        async def exported() -> dict[str, dict[str, float]]:
            # The store gauges come with the first telemetry round, before anything was sent.
            got = {name: await scrape(http, url) for name, url in urls.items()}
            assert names(got["gateway-0"]) >= GATEWAY, GATEWAY - names(got["gateway-0"])
            assert names(got["stream-worker-0"]) >= STREAM_WORKER
            assert names(got["retry-worker-0"]) >= RETRY_WORKER
            return got

        # Workers serve /metrics a moment after the stack is ready (readiness is the gateways').
        before = await wait_for(exported, timeout_s=15, interval_s=0.1, retry_on=(AssertionError, httpx.ConnectError))
        assert "notiflow_stream_length" not in names(before["stream-worker-0"])  # it does not read the stores

        async with connect(f"{gw.replace('http', 'ws')}/ws/{user}", proxy=None) as ws:
            async def online() -> bool:
                return (await scrape(http, urls["gateway-0"]))["notiflow_connected_users"] >= 1

            await wait_for(online, timeout_s=10, interval_s=0.1)
            sent = 3
            for i in range(sent):
                r = await http.post(f"{gw}/notifications", json={
                    "user_id": user, "event": "metrics.test", "payload": {"i": i},
                    "webhook_url": f"http://127.0.0.1:{dead_port}/hook",
                })
                assert r.status_code == 202
            refused = await http.post(f"{gw}/notifications", json={"user_id": user, "event": "bad event"})
            assert refused.status_code == 422
            frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(sent)]
            await ws.send(orjson.dumps({"type": "ack", "ids": [f["id"] for f in frames]}).decode())

            async def gateway_moved() -> dict[str, float]:
                now = await scrape(http, urls["gateway-0"])
                old = before["gateway-0"]
                for name in ("notiflow_notifications_accepted_total", "notiflow_ws_frames_sent_total",
                             "notiflow_delivery_latency_seconds_count", "notiflow_acks_total"):
                    assert total(now, name) >= total(old, name) + sent, name
                assert now["notiflow_notifications_refused_total{reason=invalid_request}"] >= 1
                assert now["notiflow_dlq_entries"] >= sent  # the webhooks, dead after 1 retry
                return now

            await wait_for(gateway_moved, timeout_s=30, interval_s=0.2)

        async def workers_moved() -> bool:
            sw = await scrape(http, urls["stream-worker-0"])
            rw = await scrape(http, urls["retry-worker-0"])
            assert sw["notiflow_delivery_attempts_total{channel=webhook,outcome=failed}"] >= 2 * sent
            assert total(sw, "notiflow_webhook_call_seconds_count{result=retry}") >= 2 * sent
            assert sw["notiflow_stream_entries_processed_total"] >= 2 * sent
            assert rw["notiflow_retries_moved_total"] >= sent
            assert rw["notiflow_dlq_entries"] >= sent
            return True

        await wait_for(workers_moved, timeout_s=30, interval_s=0.2)


async def test_store_errors_are_counted() -> None:
    pg_before = metrics.value("notiflow_postgres_errors_total", operation="metrics probe")
    redis_before = metrics.value("notiflow_redis_errors_total", operation="metrics probe")
    with pytest.raises(StoreUnavailable):
        async with pg_errors("metrics probe"):
            raise ConnectionResetError("server went away")
    with pytest.raises(StoreUnavailable):
        async with redis_errors("metrics probe"):
            raise ConnectionResetError("server went away")
    assert metrics.value("notiflow_postgres_errors_total", operation="metrics probe") == pg_before + 1
    assert metrics.value("notiflow_redis_errors_total", operation="metrics probe") == redis_before + 1


def test_a_busy_metrics_port_leaves_the_worker_running() -> None:
    port = free_port()
    with metrics.serve("127.0.0.1", port) as served:
        assert served == port
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False)
        assert "notiflow_delivery_attempts_total" in r.text
        with metrics.serve("127.0.0.1", port) as second:
            assert second is None
    with metrics.serve("127.0.0.1", 0) as off:
        assert off is None
