"""Workers answer GET /healthz on their metrics port: 200 while their main loop runs and beats, 503 before it
starts, once it has stopped, or when it has not beaten for too long. Unit cases with an injected clock; the
loops themselves on the real stores; and each worker process of a DevStack serving it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from helpers import wait_for

from notiflow import metrics
from notiflow.config import Settings
from notiflow.devstack import DevStack, free_port
from notiflow.health import Health
from notiflow.worker import factory

pytestmark = pytest.mark.timeout(90)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_health_follows_the_loop() -> None:
    clock = Clock()
    health = Health(stale_after_s=10, clock=clock)
    assert health.check() == (503, {"status": "starting", "last_beat_s": 0.0})
    health.beat()
    clock.now += 9
    assert health.check() == (200, {"status": "running", "last_beat_s": 9.0})
    clock.now += 2
    assert health.check() == (503, {"status": "stuck", "last_beat_s": 11.0, "stale_after_s": 10})
    health.beat()
    assert health.check()[0] == 200
    health.stopped()
    assert health.check() == (503, {"status": "stopped", "last_beat_s": 0.0})
    health.beat()  # a webhook call drained after the loop ended
    assert health.check()[0] == 503


def test_the_metrics_port_serves_healthz_beside_metrics() -> None:
    health = Health()
    port = free_port()
    with metrics.serve("127.0.0.1", port, health) as served, httpx.Client(trust_env=False, timeout=5) as http:
        assert served == port
        base = f"http://127.0.0.1:{port}"
        starting = http.get(f"{base}/healthz")
        assert (starting.status_code, starting.json()["status"]) == (503, "starting")
        health.beat()
        running = http.get(f"{base}/healthz")
        assert (running.status_code, running.json()["status"]) == (200, "running")
        assert running.headers["content-type"] == "application/json"
        assert "notiflow_delivery_attempts_total" in http.get(f"{base}/metrics").text
    with metrics.serve("127.0.0.1", port) as served, httpx.Client(trust_env=False, timeout=5) as http:
        # A gateway copy serves metrics only.
        assert http.get(f"http://127.0.0.1:{port}/healthz").status_code == 404


@pytest.mark.parametrize("role", ["stream-worker", "retry-worker"])
async def test_a_worker_is_healthy_while_its_loop_runs(settings: Settings, role: str) -> None:
    health = Health()
    stop = asyncio.Event()
    build = factory.stream_worker if role == "stream-worker" else factory.retry_worker
    async with build(settings, health=health) as worker:
        assert health.check()[0] == 503  # built, not running yet
        running = asyncio.create_task(worker.run(stop))
        await wait_for(lambda: health.check()[0] == 200, timeout_s=15, interval_s=0.05,
                       message=f"{role} healthy once its loop runs")
        stop.set()
        await asyncio.wait_for(running, 30)
    status, body = health.check()
    assert (status, body["status"]) == (503, "stopped")


async def test_every_worker_process_answers_healthz(stack) -> None:  # type: ignore[no-untyped-def]
    dev: DevStack = await asyncio.to_thread(stack, gateways=1, stream_workers=1, retry_workers=1)
    workers = {name: url.removesuffix("/metrics") + "/healthz"
               for name, url in dev.metrics_urls.items() if not name.startswith("gateway")}
    assert set(workers) == {"stream-worker-0", "retry-worker-0"}

    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        async def all_healthy() -> bool:
            answers = [await http.get(url) for url in workers.values()]
            return all(r.status_code == 200 and r.json()["status"] == "running" for r in answers)

        # Workers serve a moment after the stack is ready (readiness is the gateways').
        await wait_for(all_healthy, timeout_s=20, interval_s=0.1, retry_on=(httpx.TransportError,),
                       message="every worker's /healthz answers 200")
