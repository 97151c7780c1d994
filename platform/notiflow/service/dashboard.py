"""The figures behind the live dashboard: every node's, summed, with the store gauges, the DLQ and the
last errors. The page derives rates and latency quantiles from two consecutive answers (totals and
cumulative buckets), so this side keeps no state between requests."""

from __future__ import annotations

import time
from typing import Any

from notiflow.service.queries import QueryService
from notiflow.service.telemetry import Telemetry, json_buckets

# Counters summed once per process (several nodes of one process share its registry).
_TOTALS = ("accepted", "refused", "frames_sent", "acks", "attempts", "attempts_failed", "retries_moved",
           "pg_errors", "redis_errors")
DLQ_SHOWN = 10
ERRORS_SHOWN = 15


def aggregate(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counters and latency buckets over distinct processes; list the gateway nodes."""
    totals = dict.fromkeys(_TOTALS, 0.0)
    buckets: dict[float, float] = {}
    seen: set[str] = set()
    for n in nodes:
        process = str(n.get("process") or n.get("node"))
        if process in seen:
            continue
        seen.add(process)
        for name in _TOTALS:
            totals[name] += float(n.get(name) or 0)
        for le, count in n.get("latency_buckets") or []:
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(count)
    gateways = sorted(
        ({"node": n["node"], "sockets": int(n.get("sockets") or 0), "users": int(n.get("users") or 0),
          "age_s": round(max(0.0, time.time() - float(n.get("at") or 0)), 1)}
         for n in nodes if n.get("role") == "gateway"),
        key=lambda g: g["node"],
    )
    roles: dict[str, int] = {}
    for n in nodes:
        roles[str(n.get("role"))] = roles.get(str(n.get("role")), 0) + 1
    return {"totals": totals, "latency_buckets": json_buckets(sorted(buckets.items())), "gateways": gateways,
            "roles": roles}


class DashboardService:
    def __init__(self, telemetry: Telemetry, queries: QueryService) -> None:
        self._telemetry = telemetry
        self._queries = queries

    async def stats(self) -> dict[str, Any]:
        board = self._telemetry.board
        out = aggregate(await board.nodes())
        # The store gauges of this gateway's own telemetry round (at most stats_interval_s old).
        store = self._telemetry.store or await self._telemetry.refresh_store()
        dlq = await self._queries.dlq_list(0, None, None, DLQ_SHOWN)
        out.update(
            at=time.time(),
            store=store,
            dlq={"entries": dlq["entries"], "total": store.get("dlq_entries", len(dlq["entries"]))},
            errors=await board.errors(ERRORS_SHOWN),
        )
        return out
