"""The commands for people, as a person runs them (`python -m notiflow send|tail|stats` in a child process)
against an in-process gateway and stream worker on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from integration_support import Gateways, Workers, notify, offline_ids, users

from notiflow.client.commands import summarise

pytestmark = pytest.mark.timeout(60)


async def _cli(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notiflow", *args, env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _lines(proc: asyncio.subprocess.Process, count: int) -> list[dict[str, object]]:
    assert proc.stdout is not None
    return [orjson.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=20)) for _ in range(count)]


async def _interrupt(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGINT)
    return await asyncio.wait_for(proc.wait(), timeout=20)


async def test_send_then_tail_prints_acks_and_resumes_after_a_restart(
    gateways: Gateways, workers: Workers, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    gw = await gateways.start()
    await workers.stream()
    (user,) = users(1, "cli")
    sent = await _cli("send", user, "order.shipped", '{"order": 42}', "--url", gw.url)
    out, _ = await sent.communicate()
    assert sent.returncode == 0
    first = orjson.loads(out)["id"]

    state = tmp_path / "tail.json"
    tail = await _cli("tail", user, "--url", gw.url, "--state-file", str(state))
    (line,) = await _lines(tail, 1)
    assert line["id"] == first and line["payload"] == {"order": 42} and line["seq"] == 1
    live = [await notify(http, gw.url, [user], payload={"i": i}) for i in range(2)]
    assert [n["id"] for n in await _lines(tail, 2)] == live
    assert await _interrupt(tail) == 0
    assert orjson.loads(state.read_bytes()) == {"user_id": user, "after_seq": 3}
    assert await offline_ids(http, gw.url, user) == []  # everything printed was acknowledged

    later = [await notify(http, gw.url, [user], payload={"later": i}) for i in range(2)]
    tail = await _cli("tail", user, "--url", gw.url, "--state-file", str(state))
    assert [n["id"] for n in await _lines(tail, 2)] == later  # only what came after the first tail
    assert await _interrupt(tail) == 0
    assert orjson.loads(state.read_bytes())["after_seq"] == 5


async def test_send_refuses_a_payload_that_is_not_json(gateways: Gateways) -> None:
    gw = await gateways.start()
    sent = await _cli("send", "alice", "e", "{nope", "--url", gw.url)
    _, err = await sent.communicate()
    assert sent.returncode == 2 and b"not JSON" in err


async def test_stats_prints_the_key_figures(gateways: Gateways, http: httpx.AsyncClient) -> None:
    gw = await gateways.start()
    await notify(http, gw.url, users(1))
    proc = await _cli("stats", "--url", gw.url, "--json")
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    figures = orjson.loads(out)["metrics"]
    assert figures["notiflow_notifications_accepted"] >= 1
    assert figures["notiflow_ingest_seconds"]["count"] >= 1
    assert not any(k.endswith("_created") for k in figures)


def test_summarise_sums_labels_and_takes_histogram_quantiles() -> None:
    text = """# TYPE notiflow_x_total counter
notiflow_x_total{reason="a"} 3
notiflow_x_total{reason="b"} 4
# TYPE notiflow_lat_seconds histogram
notiflow_lat_seconds_bucket{le="0.1"} 50
notiflow_lat_seconds_bucket{le="1.0"} 100
notiflow_lat_seconds_bucket{le="+Inf"} 100
notiflow_lat_seconds_count 100
notiflow_lat_seconds_sum 20
# TYPE other_total counter
other_total 1
"""
    figures = summarise(text)
    assert figures["notiflow_x"] == 7 and "other" not in figures
    assert figures["notiflow_lat_seconds"] == {"count": 100, "p50": pytest.approx(0.1), "p99": pytest.approx(0.982)}
