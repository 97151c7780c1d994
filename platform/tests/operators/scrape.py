"""Reading a Prometheus exposition in tests: sample values by name and labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


async def scrape(http: httpx.AsyncClient, url: str) -> dict[str, float]:
    """``{"name{label=value,...}": value}`` of every sample, labels sorted; plain ``name`` when unlabeled."""
    r = await http.get(url)
    r.raise_for_status()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def total(samples: dict[str, float], name: str) -> float:
    """Sum over every label set of ``name``."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def names(samples: dict[str, float]) -> set[str]:
    return {k.split("{", 1)[0] for k in samples}
