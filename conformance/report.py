"""The suite's end-of-run summary: every scenario hands its verdict here, the terminal summary prints it."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from conformance.checker import Verdict, check, merge_stats
from conformance.history import History


@dataclass(frozen=True, slots=True)
class Entry:
    test: str
    verdict: Verdict
    latency: bool = True


_entries: list[Entry] = []
_lock = threading.Lock()


def record(test: str, verdict: Verdict, latency: bool = True) -> None:
    """Add a scenario's verdict; ``latency=False`` keeps its samples out of the suite's percentiles."""
    with _lock:
        _entries.append(Entry(test, verdict, latency))


def entries() -> list[Entry]:
    with _lock:
        return list(_entries)


def summary_lines() -> list[str]:
    runs = entries()
    if not runs:
        return ["no scenario recorded a history"]
    total = merge_stats(e.verdict for e in runs)
    timed = merge_stats(e.verdict for e in runs if e.latency)
    lines = [
        f"notifications accepted: {total['accepted']} ({total['deliveries']} deliveries);"
        f" ingest failed (definite): {total['failed']}; unknown outcome: {total['unknown']}",
        f"delivered live: {total['delivered_live']}; delivered offline: {total['delivered_offline']};"
        f" dead: {total['dead']}; expired: {total['expired']}",
        f"duplicates seen: {total['duplicates']}; lost: {total['lost']} (must be 0)",
        f"end-to-end latency (ingest sent -> socket receive): p50 {timed['p50_ms']} ms, p99 {timed['p99_ms']} ms",
        "per scenario:",
    ]
    for e in runs:
        s = e.verdict.stats
        lines.append(
            f"  {e.test}: valid={e.verdict.valid} ok={e.verdict.ok} accepted={s['accepted']}"
            f" live={s['delivered_live']} offline={s['delivered_offline']} lost={s['lost']}"
            f" p50={s['p50_ms']}ms p99={s['p99_ms']}ms"
        )
    return lines


def judge(
    test: str,
    history: History,
    *,
    limit: int = 25,
    require_ok: bool = True,
    latency: bool = True,
    problems: list[str] | None = None,
) -> Verdict:
    """Check ``history``, add it to the summary, and fail with the readable report if it is not clean.

    ``problems`` are the scenario's own findings; they fail the test too, after the checker has reported, so
    that a failure always names the notifications and users involved.
    """
    verdict = check(history)
    record(test, verdict, latency)
    good = verdict.ok if require_ok else verdict.valid
    found = "\n".join(f"  - {p}" for p in problems or [])
    assert good and not problems, (
        f"{test}: {'the checker found violations' if not good else 'the checker found nothing'}\n"
        f"{verdict.report(limit)}" + (f"\nscenario problems:\n{found}" if problems else "")
    )
    return verdict
