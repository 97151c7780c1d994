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


_entries: list[Entry] = []
_lock = threading.Lock()


def record(test: str, verdict: Verdict) -> None:
    with _lock:
        _entries.append(Entry(test, verdict))


def entries() -> list[Entry]:
    with _lock:
        return list(_entries)


def summary_lines() -> list[str]:
    runs = entries()
    if not runs:
        return ["no scenario recorded a history"]
    total = merge_stats(e.verdict for e in runs)
    lines = [
        f"notifications accepted: {total['accepted']} ({total['deliveries']} deliveries);"
        f" ingest failed (definite): {total['failed']}; unknown outcome: {total['unknown']}",
        f"delivered live: {total['delivered_live']}; delivered offline: {total['delivered_offline']};"
        f" dead: {total['dead']}; expired: {total['expired']}",
        f"duplicates seen: {total['duplicates']}; lost: {total['lost']} (must be 0)",
        f"end-to-end latency (ingest sent -> socket receive): p50 {total['p50_ms']} ms, p99 {total['p99_ms']} ms",
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


def judge(test: str, history: History, *, limit: int = 25, require_ok: bool = True) -> Verdict:
    """Check ``history``, add it to the summary, and fail with the readable report if it is not clean."""
    verdict = check(history)
    record(test, verdict)
    good = verdict.ok if require_ok else verdict.valid
    assert good, f"{test}: the checker found violations\n{verdict.report(limit)}"
    return verdict
