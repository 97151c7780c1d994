"""The suite's own parts: nemeses heal when the scenario fails, the report's timeline buckets what happened when,
the HTML is self-contained, the probe's recovery streak is found where it begins."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from chaos import report
from chaos.cluster import ChaosTarget
from chaos.nemesis import Outage, Toxic
from chaos.workload import Mix, Probe, Workload
from conformance.history import History
from conformance.scripted import Script


@pytest.mark.timeout(60)
async def test_a_nemesis_heals_when_the_scenario_fails(chaos_target: ChaosTarget) -> None:
    path = "workers_redis"
    with pytest.raises(RuntimeError, match="scenario failed"):
        async with Outage(chaos_target, (path,)).fault():
            proxy = chaos_target.toxi.proxies_sync()[chaos_target.paths[path]]
            assert proxy.enabled is False
            raise RuntimeError("scenario failed")
    assert chaos_target.toxi.proxies_sync()[chaos_target.paths[path]].enabled is True
    toxic = Toxic(chaos_target, (path,), "latency", {"latency": 1})
    with pytest.raises(RuntimeError):
        async with toxic.fault():
            assert toxic.toxic_name in await chaos_target.toxi.toxics(chaos_target.paths[path])
            raise RuntimeError("scenario failed")
    assert await chaos_target.toxi.toxics(chaos_target.paths[path]) == {}


def test_the_timeline_buckets_receives_latency_and_refusals_by_second() -> None:
    s = Script()  # one operation per millisecond
    s.open("c", "u")
    for i in range(3):
        s.recv("c", "u", s.ingest(f"a{i}", ["u"]), seq=i + 1)
    s.ingest("refused", ["u"], outcome="fail")
    s.t_ns += 2_000_000_000  # two seconds later
    s.recv("c", "u", s.ingest("late", ["u"]), seq=4)
    tl = report.series(s.history.ops, 0, 1_000_000_000)
    assert tl["t"] == [0.0, 1.0, 2.0]
    assert tl["deliveries"] == [3, 0, 1] and tl["accepted"] == [3, 0, 1] and tl["refused"] == [1, 0, 0]
    assert tl["p99_ms"][0] == 2.0 and tl["p99_ms"][1] == 0.0  # each receive came 2 ms after its ingest was sent


def test_the_report_is_self_contained_and_shades_the_fault(tmp_path: Path) -> None:
    s = Script()
    s.open("c", "u")
    s.recv("c", "u", s.ingest("a", ["u"]), seq=1)
    result = report.Result("demo", "Redis latency", "failed", "1 lost", timeline=report.series(s.history.ops, 0, 1),
                           window_s=(0.0, 0.5), counts=dict.fromkeys(report.COUNTS, 0), lost=["notification n user u"])
    page = report.write([result, report.Result.skipped("other", "SIGKILL", "needs a cluster")], tmp_path).read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    svg = page[page.index("<svg") : page.index("</svg>") + 6]
    ET.fromstring(svg)  # well-formed inline SVG
    assert 'fill="#f4b4b4"' in svg  # the fault window
    assert "needs a cluster" in page and "notification n user u" in page
    assert (tmp_path / "summary.json").read_text().count('"name"') == 2


def test_recovery_begins_at_the_first_probe_of_a_good_streak() -> None:
    work = Workload([], None, History(), "r", Mix())  # type: ignore[arg-type]
    goods = [True, False, False, True, True, False, True, True, True, True, True]
    work.probes = [Probe(i * 100, g) for i, g in enumerate(goods)]
    assert work.healthy_streak(since_ns=150, streak=4) == 6  # not 0 (before heal), not 3 (broken at 5)
    assert work.healthy_streak(since_ns=150, streak=6) is None
