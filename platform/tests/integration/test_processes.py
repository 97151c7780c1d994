"""`notiflow gateway --processes N` (NOTIFLOW_GATEWAY_PROCESSES): copies on one port, each a node of its own
with its own routing channel; a notification reaches a user whichever copy holds the socket; the copies die
with their parent, so a SIGKILLed gateway leaves nothing serving its port. The parent of gateway or stream
worker copies serves every copy's metrics on NOTIFLOW_METRICS_PORT, labelled by copy: one scrape sees them all."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from helpers import wait_for
from integration_support import SocketFactory, notify, users
from prometheus_client.parser import text_string_to_metric_families

from notiflow.config import Settings
from notiflow.devstack import DevStack
from notiflow.streams.presence import Presence

pytestmark = pytest.mark.timeout(90)

StackFactory = Callable[..., DevStack]


async def test_gateway_processes_share_one_port_as_separate_nodes(
    stack: StackFactory, socket: SocketFactory, http: httpx.AsyncClient, rds: aioredis.Redis, settings: Settings
) -> None:
    dev = await asyncio.to_thread(stack, gateways=1, stream_workers=1, retry_workers=0, gateway_processes=2)
    gw = dev.gateway_urls[0]
    parent = dev.supervisor.pid("gateway-0")
    assert parent is not None

    def copies() -> list[int]:
        children = Path(f"/proc/{parent}/task/{parent}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    await wait_for(lambda: len(copies()) == 2, timeout_s=20, message="two gateway copies")
    node = dev.node_ids["gateway-0"]

    async def both_serving() -> bool:
        # A copy counts once its lifespan has run (its node key is alive) and it answers on the shared port;
        # before that the kernel sends every connection to the copy that is already listening.
        alive = [await rds.exists(settings.key("node", f"{node}-p{i}", "alive")) for i in (0, 1)]
        return all(alive)

    await wait_for(both_serving, timeout_s=20, message="both gateway copies serving")
    # Enough sockets that the kernel's SO_REUSEPORT hash sends some to each copy.
    people = users(24)
    sockets = [await socket(gw, u) for u in people]
    presence = Presence(rds, settings)

    async def on_both() -> bool:
        nodes = await presence.live_nodes(people)
        return {n for ns in nodes.values() for n in ns} == {f"{node}-p0", f"{node}-p1"}

    await wait_for(on_both, timeout_s=20, message="sockets on both copies, each copy its own node")
    nid = await notify(http, gw, people)
    for sock in sockets:
        await sock.wait_ids([nid], timeout_s=20)

    # SIGKILL of the parent alone: its copies die with it (PR_SET_PDEATHSIG), nothing serves the port.
    pids = copies()
    os.kill(parent, signal.SIGKILL)

    def gone() -> bool:
        return not any(_running(p) for p in pids)

    await wait_for(gone, timeout_s=10, message="copies gone with their parent")
    with pytest.raises(httpx.TransportError):
        await http.get(f"{gw}/healthz", timeout=2)


async def test_one_scrape_sees_every_copy(
    stack: StackFactory, socket: SocketFactory, http: httpx.AsyncClient, rds: aioredis.Redis, settings: Settings
) -> None:
    dev = await asyncio.to_thread(stack, gateways=1, stream_workers=1, retry_workers=0, gateway_processes=2,
                                  stream_worker_processes=2, stats_interval_s=0.2)
    urls = dev.metrics_urls
    copies = {f"{name}.p{i}" for name in ("gateway-0", "stream-worker-0") for i in (0, 1)}
    assert set(urls) == {"gateway-0", "stream-worker-0", *copies}  # the parents' ports, and each copy's own
    assert len({urls[name] for name in (*copies, "gateway-0", "stream-worker-0")}) == 6
    node = dev.node_ids["gateway-0"]

    async def both_serving() -> bool:
        # Until a copy's lifespan has run, the kernel sends every connection to the copy already listening.
        return all([await rds.exists(settings.key("node", f"{node}-p{i}", "alive")) for i in (0, 1)])

    await wait_for(both_serving, timeout_s=20, message="both gateway copies serving")
    people = users(24)  # enough that the kernel's SO_REUSEPORT hash sends some to each gateway copy
    for u in people:
        await socket(dev.gateway_urls[0], u)

    async def every_socket_counted_once() -> dict[str, float]:
        # One scrape of the parent; each copy's gauge is set by its telemetry round (stats_interval_s).
        text = (await http.get(urls["gateway-0"])).text
        got = {s.labels.get("copy", ""): s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "notiflow_websockets"}
        assert set(got) == {"p0", "p1"} and sum(got.values()) == len(people) and all(got.values()), got
        return got

    await wait_for(every_socket_counted_once, timeout_s=20, interval_s=0.1, retry_on=(AssertionError,
                   httpx.TransportError), message="the gateway parent's scrape counts every copy's sockets")

    async def workers_healthy() -> bool:
        r = await http.get(urls["stream-worker-0"].replace("/metrics", "/healthz"))
        assert r.status_code == 200 and set(r.json()["copies"]) == {"p0", "p1"}, r.text
        return True

    await wait_for(workers_healthy, timeout_s=20, interval_s=0.1, retry_on=(AssertionError, httpx.TransportError),
                   message="the stream worker parent's /healthz: both copies running")
    # Each gateway copy logged its open-files limit at start (the copies share their parent's log).
    lines = [orjson.loads(raw) for raw in dev.supervisor.log_path("gateway-0").read_bytes().splitlines()
             if raw.startswith(b"{")]
    limits = [r for r in lines if str(r.get("msg", "")).startswith("open-files limit")]
    assert len(limits) == 2 and all(r["ws_max_sockets"] == 20_000 for r in limits), limits


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"
