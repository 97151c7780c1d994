"""deploy/grafana/notiflow.json is a valid dashboard and every query names a metric notiflow exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from notiflow import metrics

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "notiflow.json"
_NAME = re.compile(r"\bnotiflow_[a-z0-9_]+")


def exported() -> set[str]:
    """Every sample name the registry can expose (histogram series included) and the store gauges."""
    out = {name for name, _ in metrics.STORE_GAUGES.values()}
    for family in metrics.REGISTRY.collect():
        # From the definition, not the samples: a labelled series appears only after its first event.
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        out.update(family.name + suffix for suffix in suffixes)
    return out


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for p in dashboard["panels"]:
        found.append(p)
        found.extend(p.get("panels", []))
    return found


def test_dashboard_is_valid_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dash):
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["targets"], f"panel {p['title']!r} has no query"
            assert {t["refId"] for t in p["targets"]} == {chr(65 + i) for i in range(len(p["targets"]))}


def test_every_expression_names_an_exported_metric() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names = exported()
    used: set[str] = set()
    for p in panels(dash):
        for target in p.get("targets", []):
            found = set(_NAME.findall(target["expr"]))
            assert found, f"{p['title']!r}: {target['expr']!r} names no notiflow metric"
            assert found <= names, f"{p['title']!r} uses unknown metrics {sorted(found - names)}"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            used |= found
    # The dashboard covers what the issue asks for.
    for name in ("notiflow_notifications_refused_total", "notiflow_consumer_group_lag", "notiflow_dlq_entries",
                 "notiflow_delivery_latency_seconds_bucket", "notiflow_postgres_errors_total",
                 "notiflow_redis_errors_total", "notiflow_reconciler_repairs_total", "notiflow_connected_users"):
        assert name in used, name
