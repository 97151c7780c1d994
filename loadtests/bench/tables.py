"""The human-readable table printed before the JSON line."""

from __future__ import annotations

from typing import Any


def _fmt(p: dict[str, Any]) -> str:
    if not p.get("n"):
        return "-"
    return f"{p['p50']:.1f} / {p['p95']:.1f} / {p['p99']:.1f}  (max {p['max']:.0f}, n={p['n']})"


def print_table(r: dict[str, Any]) -> None:
    c = r["config"]
    cpu = r["cpu"]
    rows = [
        ("mode", f"{c['mode']}: {c['gateways']} gw, {c['stream_workers']} sw, {c['retry_workers']} rw, "
                 f"{c['sockets']} sockets, {c['producers']} producers, {c['recipients']} recipients/notif, "
                 f"{c.get('batch', 1)} notif/request, "
                 f"offline share {c['offline_share']}, {c['duration_s']}s, {c['stores']} stores, "
                 f"{c['client_procs']} client proc(s)"),
        ("accepted/s (202)", f"{r['accepted_per_s']}  ({r['accepted']} total, {r['recipients_per_s']} recipients/s)"),
        ("deliveries/s (sockets)", f"{r['deliveries_per_s']}  ({r['deliveries_total']} total)"),
        ("POST latency ms p50/95/99", _fmt(r["post_latency_ms"])),
        ("e2e latency ms p50/95/99", _fmt(r["e2e_latency_ms"])),
        ("202->frame ms p50/95/99", _fmt(r["after_202_latency_ms"]) + f"  ({r['arrived_before_202']} before 202)"),
        ("429 / 503 / other / errors", f"{r['status_429']} / {r['status_503']} / {r['status_other'] or 0} / "
                                        f"{r['errors'] or 0}"),
        ("missing (must be 0)", f"{r['missing']}  of {r['expected_live']} expected; duplicates {r['duplicates']}; "
                                f"closed sockets {r['closed_sockets']} {r['closed_reasons'] or ''}"),
        ("acks not applied (must be 0)", f"{r['acks_dropped']}  (left `dispatched` though every frame was acked)"),
        ("server warnings", " ".join(f"[{k}]={v}" for k, v in r["server_warnings"].items()) or "none"),
        ("drain after stop", f"{r['drain_s']} s"),
        ("idle kB per socket (gateways)", "-" if r["idle_kb_per_socket"] is None else
                                          f"{r['idle_kb_per_socket']}  (resident memory, {c['sockets']} sockets open)"),
        ("CPU cores (server/loadgen)", f"{cpu['server_cores']} / {cpu['loadgen_cores']} of {cpu['cores']}  "
                                       f"machine busy {cpu['machine_busy_pct']}%, other {cpu['other_cores']} cores; "
                                       f"busy before load {r['busy_before_load_pct']}%"),
        ("other programs (cores)", " ".join(f"{k}={v}" for k, v in cpu["other_top"].items()) or "-"),
        ("CPU s by role", " ".join(f"{k}={v}" for k, v in sorted(cpu["cpu_s"].items()))),
        ("CPU ms per notification", " ".join(f"{k}={v}" for k, v in sorted(r["cpu_ms_per_notification"].items()))),
        ("deliveries in PostgreSQL", " ".join(f"{k}={v}" for k, v in r["db_status"].items())),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(flush=True)
