"""The chaos report: ``chaos-report/summary.json`` and a self-contained ``chaos-report/index.html`` (inline SVG,
no CDN): per scenario the verdict, the checker's counts, the time to recover after heal, and a timeline of
deliveries per second, p99 end-to-end latency and accepted vs refused ingest per second, fault window shaded."""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conformance.checker import Verdict
from conformance.history import Op, pairs
from conformance.timeline import Timeline, percentile

COUNTS = ("accepted", "delivered_live", "offline", "dead", "lost", "duplicated", "unexpected", "recovered")


@dataclass
class Result:
    name: str
    row: str
    status: str  # passed | failed | skipped
    reason: str = ""
    fault: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recovery_s: float | None = None
    p99_fault_ms: float | None = None
    p99_ms: float | None = None
    window_s: tuple[float, float] | None = None
    runtime_s: float = 0.0
    drained: bool = True
    run_id: str = ""
    timeline: dict[str, list[float]] = field(default_factory=dict)
    checker: str = ""
    lost_keys: list[tuple[str, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @classmethod
    def skipped(cls, name: str, row: str, reason: str) -> Result:
        return cls(name, row, "skipped", reason)

    @classmethod
    def of(
        cls, name: str, row: str, nemesis: Any, verdict: Verdict, lost: dict[tuple[str, str], str],
        problems: list[str], **kw: Any,
    ) -> Result:  # fmt: skip
        s = verdict.stats
        counts = {
            "accepted": s["accepted"], "delivered_live": s["delivered_live"], "offline": s["delivered_offline"],
            "dead": s["dead"], "lost": len(lost), "duplicated": len(verdict.duplicated),
            "unexpected": len(verdict.unexpected), "recovered": len(verdict.recovered),
            "missed_live": len(verdict.missed_live), "ingest_failed": s["failed"], "ingest_unknown": s["unknown"],
            "deliveries": s["deliveries"],
        }  # fmt: skip
        inject_ns, heal_ns = kw.pop("window")
        rows = sorted(lost.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        failed = bool(lost or verdict.unexpected or problems)
        reasons = [f"{len(lost)} lost"] if lost else []
        reasons += [f"{len(verdict.unexpected)} unexpected"] if verdict.unexpected else []
        return cls(
            name, row, "failed" if failed else "passed", "; ".join(reasons + problems), nemesis.name,
            dict(nemesis.details), counts,
            lost=[f"notification {n} user {u}: {why}" for (n, u), why in rows[:200]],
            unexpected=[f"notification {n} user {u}: {w}" for (n, u), w in sorted(verdict.unexpected.items())[:200]],
            problems=problems, p99_ms=s["p99_ms"], window_s=(inject_ns / 1e9, heal_ns / 1e9),
            checker=verdict.report(25), lost_keys=[k for k, _ in rows], **kw,
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("lost_keys")
        return data


def series(ops: list[Op], inject_ns: int, heal_ns: int) -> dict[str, list[float]]:
    """Per-second buckets over the run: first receives, their p99 latency, ingests accepted and refused."""
    tl = Timeline.build(ops, pairs(ops))
    end_s = max(1, math.ceil((ops[-1].time_ns if ops else 0) / 1e9))
    recv = [0.0] * end_s
    lat: list[list[float]] = [[] for _ in range(end_s)]
    accepted, refused = [0.0] * end_s, [0.0] * end_s
    for ing in tl.ingests.values():
        if ing.complete_ns is None:
            continue
        b = min(end_s - 1, int(ing.complete_ns / 1e9))
        if ing.outcome == "ok":
            accepted[b] += 1
            for user in ing.user_ids:
                d = tl.deliveries.get((str(ing.id), user))
                if d is not None and d.first_recv_ns is not None:
                    r = min(end_s - 1, int(d.first_recv_ns / 1e9))
                    recv[r] += 1
                    lat[r].append((d.first_recv_ns - ing.invoke_ns) / 1e6)
        else:
            refused[b] += 1
    p99 = [round(percentile(x, 99), 1) for x in lat]
    return {"t": [float(i) for i in range(end_s)], "deliveries": recv, "p99_ms": p99, "accepted": accepted,
            "refused": refused}  # fmt: skip


# --- HTML ----------------------------------------------------------------------------------------
_W, _H, _PAD = 760, 84, 44


def _panel(t: list[float], lines: list[tuple[list[float], str, str]], window: tuple[float, float] | None, y0: int,
           title: str) -> str:  # fmt: skip
    span = max(t[-1] if t else 1.0, 1.0)
    top = max([max(v) if v else 0 for v, _, _ in lines] + [1.0])

    def x(s: float) -> float:
        return _PAD + (s / span) * (_W - _PAD - 10)

    def y(v: float) -> float:
        return y0 + _H - (v / top) * (_H - 14)

    parts = [f'<rect x="{_PAD}" y="{y0}" width="{_W - _PAD - 10}" height="{_H}" fill="#fafafa" stroke="#ccc"/>']
    if window is not None:
        a, b = x(window[0]), x(max(window[1], window[0] + 0.05))
        parts.append(f'<rect x="{a:.1f}" y="{y0}" width="{b - a:.1f}" height="{_H}" fill="#f4b4b4" opacity="0.5"/>')
    for values, color, _label in lines:
        pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(t, values, strict=False))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
    legend = " ".join(f'<tspan fill="{c}">■ {html.escape(lbl)}</tspan>' for _, c, lbl in lines)
    parts.append(f'<text x="{_PAD + 4}" y="{y0 + 11}" font-size="10">{html.escape(title)} (max {top:g})'
                 f" {legend}</text>")
    parts.append(f'<text x="2" y="{y0 + _H}" font-size="9">0</text>')
    parts.append(f'<text x="2" y="{y0 + 10}" font-size="9">{top:g}</text>')
    return "".join(parts)


def svg(r: Result) -> str:
    tl = r.timeline
    if not tl.get("t"):
        return ""
    t = tl["t"]
    panels = [
        _panel(t, [(tl["deliveries"], "#1f77b4", "deliveries/s")], r.window_s, 4, "deliveries per second"),
        _panel(t, [(tl["p99_ms"], "#9467bd", "p99 ms")], r.window_s, 8 + _H, "p99 end-to-end latency, ms"),
        _panel(t, [(tl["accepted"], "#2ca02c", "accepted/s"), (tl["refused"], "#d62728", "refused/s")], r.window_s,
               12 + 2 * _H, "ingest per second"),
    ]  # fmt: skip
    height = 3 * _H + 30
    axis = f'<text x="{_PAD}" y="{height - 4}" font-size="9">0 s</text>'
    axis += f'<text x="{_W - 40}" y="{height - 4}" font-size="9">{t[-1]:g} s</text>'
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}">{"".join(panels)}{axis}</svg>'


def _fmt(v: Any) -> str:
    return "—" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def render(results: list[Result], title: str) -> str:
    head = ["scenario", "fault (SPEC §6)", "verdict", *COUNTS, "p99 fault ms", "recovery s"]
    rows = []
    for r in results:
        cells = [r.name, r.row, r.status, *(r.counts.get(c) if r.counts else None for c in COUNTS), r.p99_fault_ms,
                 r.recovery_s]  # fmt: skip
        cls = {"passed": "ok", "failed": "bad"}.get(r.status, "skip")
        rows.append(f'<tr class="{cls}">' + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    cards = []
    for r in results:
        cls = {"passed": "ok", "failed": "bad"}.get(r.status, "skip")
        body = [f'<h2 id="{html.escape(r.name)}" class="{cls}">{html.escape(r.name)}: {r.status}</h2>',
                f"<p><b>{html.escape(r.row)}</b>. {html.escape(r.fault)} {html.escape(json.dumps(r.details))}</p>"]
        if r.reason:
            body.append(f"<p>{html.escape(r.reason)}</p>")
        if r.status != "skipped":
            window = f"{r.window_s[0]:.1f}-{r.window_s[1]:.1f} s" if r.window_s else "—"
            body.append(f"<p>fault window {window}; recovery after heal {_fmt(r.recovery_s)} s; p99 during the fault"
                        f" {_fmt(r.p99_fault_ms)} ms, whole run {_fmt(r.p99_ms)} ms; run {r.runtime_s:.0f} s;"
                        f" counts {html.escape(json.dumps(r.counts))}</p>")  # fmt: skip
            body.append(svg(r))
            if r.lost or r.unexpected or r.problems:
                body.append("<pre>" + html.escape("\n".join(r.problems + r.lost[:50] + r.unexpected[:50])) + "</pre>")
        cards.append("<section>" + "".join(body) + "</section>")
    style = ("body{font-family:sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}tr.ok td:nth-child(3),h2.ok{color:#17702a}"
             "tr.bad td:nth-child(3),h2.bad{color:#b00}tr.skip{color:#888}h2{font-size:16px;margin-top:1.5em}"
             "pre{background:#f6f6f6;font-size:11px;overflow:auto}")  # fmt: skip
    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            "<p>Verdict: lost = 0 and unexpected = 0 (conformance checker, webhook channel, SPEC §4 dead-but-listed),"
            " the probe healthy again after heal within the bound, and for client and downstream faults p99 during"
            " the fault within its bound. Shaded: the fault window.</p>"
            f"{table}{''.join(cards)}</body></html>")  # fmt: skip


def write(results: list[Result], directory: Path, title: str = "notiflow chaos report") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    summary = {"title": title, "scenarios": [r.summary() for r in results],
               "passed": sum(r.passed for r in results), "failed": sum(r.status == "failed" for r in results),
               "skipped": sum(r.status == "skipped" for r in results)}  # fmt: skip
    (directory / "summary.json").write_text(json.dumps(summary, indent=1))
    (directory / "index.html").write_text(render(results, title))
    return directory / "index.html"


def table(results: list[Result]) -> str:
    """The plain-text table (for the terminal and the lead's note)."""
    cols = ["scenario", "verdict", "accepted", "live", "offline", "dead", "lost", "dups", "p99 fault ms", "recovery s"]
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for r in results:
        c = r.counts
        vals = [r.name, r.status, c.get("accepted"), c.get("delivered_live"), c.get("offline"), c.get("dead"),
                c.get("lost"), c.get("duplicated"), r.p99_fault_ms, r.recovery_s]  # fmt: skip
        lines.append(" | ".join(_fmt(v) for v in vals))
    return "\n".join(lines)
