"""The run's bookkeeping: what was sent, what arrived, and percentiles of the latencies."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sent:
    t0: float  # just before the POST
    t202: float  # when the 202 was read
    online: tuple[str, ...]  # recipients with an open socket at send time


@dataclass
class Stats:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, Sent] = field(default_factory=dict)
    accepted_in_window: int = 0
    recipients_accepted: int = 0
    recipients_in_window: int = 0
    post_latency: list[float] = field(default_factory=list)  # POST round trip of 202s
    arrivals: dict[tuple[str, str], float] = field(default_factory=dict)  # (id, user) -> first arrival
    arrivals_in_window: int = 0
    duplicates: int = 0
    frames: int = 0
    acks_sent: int = 0
    closed_sockets: dict[str, str] = field(default_factory=dict)  # user -> why
    window: tuple[float, float] = (0.0, 0.0)


def percentiles(values: list[float], ps: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles in milliseconds, plus max."""
    if not values:
        return {**{f"p{p:g}": None for p in ps}, "max": None, "n": 0}
    data = sorted(values)
    out: dict[str, Any] = {}
    for p in ps:
        rank = max(0, min(len(data) - 1, math.ceil(p / 100 * len(data)) - 1))
        out[f"p{p:g}"] = round(data[rank] * 1000, 2)
    out["max"] = round(data[-1] * 1000, 2)
    out["n"] = len(data)
    return out
