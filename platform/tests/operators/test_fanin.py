"""The parent of ``--processes`` copies serves every copy's metrics, each sample labelled with its copy, and
a /healthz that is 200 only when every copy's is. Copies here are metrics servers of this process, each with
a registry of its own (the real processes are in integration/test_processes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from notiflow import metrics
from notiflow.devstack import free_port_range
from notiflow.fanin import Copies, CopiesHealth, copies_registry, copy_port
from notiflow.health import Health

pytestmark = pytest.mark.timeout(60)


def copy_registry(sockets: float, frames: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("notiflow_websockets", "Open WebSockets on this node", registry=registry).set(sockets)
    Counter("notiflow_ws_frames_sent_total", "frames", registry=registry).inc(frames)
    return registry


@pytest.fixture
def base_port() -> int:
    return free_port_range(4)


@pytest.fixture
def served(base_port: int) -> Iterator[list[Health]]:
    """Copies p0 and p1 serving on their ports (p2 is expected but never starts)."""
    healths = [Health(), Health()]
    with ExitStack() as stack:
        for i, (sockets, frames) in enumerate(((3, 10), (5, 20))):
            port = copy_port(base_port, i)
            assert stack.enter_context(metrics.serve("127.0.0.1", port, healths[i], copy_registry(sockets, frames)))
        yield healths


def samples(text: str) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("copy", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_one_scrape_sees_every_copy_labelled(base_port: int, served: list[Health]) -> None:
    copies = Copies("0.0.0.0", base_port, 3, timeout_s=1.0)  # a wildcard host is reached on loopback
    with metrics.serve("127.0.0.1", base_port, registry=copies_registry(copies)):
        text = httpx.get(f"http://127.0.0.1:{base_port}/metrics", trust_env=False, timeout=10).text
    got = samples(text)
    assert got[("notiflow_websockets", "p0")] == 3 and got[("notiflow_websockets", "p1")] == 5
    assert got[("notiflow_ws_frames_sent_total", "p0")] == 10 and got[("notiflow_ws_frames_sent_total", "p1")] == 20
    assert [got[("notiflow_process_copy_up", f"p{i}")] for i in range(3)] == [1, 1, 0]
    assert "# TYPE notiflow_ws_frames_sent_total counter" in text


def test_the_parent_is_healthy_only_when_every_copy_is(base_port: int, served: list[Health]) -> None:
    two = CopiesHealth(Copies("127.0.0.1", base_port, 2, timeout_s=1.0))
    status, body = two.check()
    assert (status, body["copies"]["p0"]["status"]) == (503, "starting")
    served[0].beat()
    assert two.check()[0] == 503  # p1 still starting
    served[1].beat()
    status, body = two.check()
    assert status == 200 and {c["status"] for c in body["copies"].values()} == {"running"}
    three = CopiesHealth(Copies("127.0.0.1", base_port, 3, timeout_s=1.0))
    status, body = three.check()
    assert (status, body["copies"]["p2"]) == (503, {"status": "unreachable"})
    served[1].stopped()
    assert two.check()[0] == 503
