"""One scrape for every copy of ``notiflow <command> --processes N``.

Copy ``i`` serves its own registry (and a worker copy its ``/healthz``) on ``NOTIFLOW_METRICS_PORT + 1 + i``;
the parent, which only supervises, serves ``NOTIFLOW_METRICS_PORT``: at each scrape it reads every copy's
``/metrics`` over loopback and exposes the samples together, each labelled ``copy="p<i>"``, with
``notiflow_process_copy_up{copy}`` saying which copies answered. Its ``/healthz`` is 200 only when every copy's
is. So a host needs one scrape target whatever N is, and a gateway scrape never stands for one copy picked by
SO_REUSEPORT. Not prometheus_client's multiprocess mode: that aggregates only its own metric types through files
(no custom collectors such as metrics.CountedHistogram or the store gauges), and each copy's telemetry reads its
own in-process registry for the dashboard.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

COPY_LABEL = "copy"
#: Seconds the parent waits for one copy's answer within a scrape (Prometheus' own default timeout is 10 s).
COPY_TIMEOUT_S = 2.0


def copy_port(metrics_port: int, index: int) -> int:
    """Copy ``index``'s own metrics port; 0 (metrics off) stays 0."""
    return metrics_port + 1 + index if metrics_port else 0


def _loopback(host: str) -> str:
    # Copies bind NOTIFLOW_HOST; a wildcard address is reached on loopback.
    return "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)


# The copies are on this host: never through an HTTP proxy named in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout_s: float) -> tuple[int, bytes]:
    try:
        with _DIRECT.open(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Copies:
    """The copies' metrics ports, as the parent reaches them."""

    def __init__(self, host: str, metrics_port: int, count: int, timeout_s: float = COPY_TIMEOUT_S) -> None:
        address = _loopback(host)
        address = f"[{address}]" if ":" in address else address
        self.urls = {f"p{i}": f"http://{address}:{copy_port(metrics_port, i)}" for i in range(count)}
        self.timeout_s = timeout_s

    def get(self, name: str, path: str) -> tuple[int, bytes] | None:
        """One copy's answer, or None when it did not answer (starting, restarting, hung)."""
        try:
            return _get(self.urls[name] + path, self.timeout_s)
        except (OSError, ValueError):
            return None


class CopiesCollector(Collector):
    """Every copy's samples, labelled with the copy, read at each scrape."""

    def __init__(self, copies: Copies) -> None:
        self._copies = copies

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the families are whatever the copies export

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("notiflow_process_copy_up", "1 when the process copy answered this scrape",
                               labels=[COPY_LABEL])
        merged: dict[str, Metric] = {}
        for name in self._copies.urls:
            answer = self._copies.get(name, "/metrics")
            up.add_metric([name], 1.0 if answer is not None and answer[0] == 200 else 0.0)
            if answer is None or answer[0] != 200:
                continue
            for family in text_string_to_metric_families(answer[1].decode()):
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type)
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, COPY_LABEL: name}, s.value, s.timestamp)
        yield from merged.values()
        yield up


class CopiesHealth:
    """``/healthz`` of the parent: 200 when every copy answers 200, else 503; the body has each copy's."""

    def __init__(self, copies: Copies) -> None:
        self._copies = copies

    def check(self) -> tuple[int, dict[str, Any]]:
        each: dict[str, Any] = {}
        for name in self._copies.urls:
            answer = self._copies.get(name, "/healthz")
            if answer is None:
                each[name] = {"status": "unreachable"}
                continue
            try:
                each[name] = {"http": answer[0], **orjson.loads(answer[1])}
            except orjson.JSONDecodeError:
                each[name] = {"http": answer[0]}
        healthy = all(v.get("http") == 200 for v in each.values())
        return (200 if healthy else 503), {"status": "running" if healthy else "unhealthy", "copies": each}


def copies_registry(copies: Copies) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CopiesCollector(copies))
    return registry
