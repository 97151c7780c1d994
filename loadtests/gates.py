"""Load gates (`make load`): a fresh `notiflow dev` stack, the ci profiles of the four k6 scenarios and Locust
headless against it, one summary table, and a non-zero exit if any gate failed.

    python loadtests/gates.py                          # what `make load` runs
    python loadtests/gates.py --gateways 1 --only websocket-storm.js,locust
    python loadtests/gates.py --profile default        # the longer default profiles (about 5 minutes)
    python loadtests/gates.py --base-url http://127.0.0.1:8000 --sink-url http://127.0.0.1:9/fail  # no stack

The stack: `notiflow dev --gateways 2 --stream-workers 1 --retry-workers 1` in a temporary directory on free
loopback ports, Redis and PostgreSQL embedded unless NOTIFLOW_REDIS_URL / NOTIFLOW_DATABASE_URL are set (then a
fresh database and key prefix, removed afterwards), short retries (MAX_RETRIES 3, base 100 ms, cap 400 ms) and
a failing webhook downstream in this process for retry-storm.js. Every phase has a time bound.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from stores import Stores
from tools import FailingSink, Outcome, run_k6, run_locust

from notiflow.devstack import free_port_range

RETRIES = {"MAX_RETRIES": "3", "RETRY_BASE_MS": "100", "RETRY_CAP_MS": "400", "WEBHOOK_RETRY_RATE_PER_HOST": "20"}
SCRIPTS = ["websocket-storm.js", "notification-fanout.js", "reconnect-chaos.js", "retry-storm.js"]
LOCUST = {"ci": (40, 15), "default": (100, 60)}  # (users, seconds)


@contextlib.contextmanager
def dev_stack(gateways: int, sink_host: str, workdir: Path) -> Iterator[list[str]]:
    """`notiflow dev` as a child process; yields the gateway URLs once each answers /readyz."""
    stores = Stores("load")
    stores.prepare()
    port = free_port_range(gateways)
    env = {**os.environ, **{f"NOTIFLOW_{k}": v for k, v in RETRIES.items()}}
    env.update(NOTIFLOW_PORT=str(port), NOTIFLOW_WEBHOOK_ALLOWED_HOSTS=sink_host, NOTIFLOW_LOG_LEVEL="WARNING")
    # Webhooks need a signing secret; the sink is on loopback (`notiflow dev` allows private addresses).
    env["NOTIFLOW_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    if stores.database_url:
        env["NOTIFLOW_DATABASE_URL"] = stores.database_url
    if stores.redis_url:
        env.update(NOTIFLOW_KEY_PREFIX=stores.prefix, NOTIFLOW_STREAM_KEY=f"{stores.prefix}:stream")
    cmd = [sys.executable, "-m", "notiflow", "dev", "--gateways", str(gateways)]
    log = (workdir / "notiflow-dev.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    urls = [f"http://127.0.0.1:{port + i}" for i in range(gateways)]
    try:
        deadline = time.monotonic() + 120
        for url in urls:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"notiflow dev exited with {proc.returncode}; see {log.name}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} not ready within 120 s; see {log.name}")
                time.sleep(0.2)
        yield urls
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        stores.cleanup()


def run_gates(urls: list[str], sink_url: str, only: set[str] | None, profile: str = "ci") -> list[Outcome]:
    base = {"BASE_URL": ",".join(urls), "PROFILE": profile if profile == "ci" else ""}
    outcomes = []
    for script in SCRIPTS:
        if only and script not in only:
            continue
        env = dict(base)
        if script == "retry-storm.js":
            env.update(SINK_URL=sink_url, **{k: v for k, v in RETRIES.items() if k != "WEBHOOK_RETRY_RATE_PER_HOST"})
            env["RETRY_RATE_PER_HOST"] = RETRIES["WEBHOOK_RETRY_RATE_PER_HOST"]
        print(f"--- {script}", flush=True)
        outcomes.append(run_k6(script, env, timeout_s=600))
    if not only or "locust" in only:
        print("--- locust", flush=True)
        users, seconds = LOCUST[profile]
        outcomes.append(run_locust(urls[0], users=users, duration_s=seconds))
    return outcomes


def _ms(value: object) -> str:
    return "-" if value is None else f"{float(value):.0f}"  # type: ignore[arg-type]


def row(o: Outcome) -> list[str]:
    """gate, result, users, messages, p50, p99, lost, duplicates, what failed."""
    verdict = "PASS" if o.passed else f"FAIL ({o.returncode})"
    if o.name == "locust":
        s = o.metrics.get("summary", {})
        cells = [s.get("users"), s.get("judged"), s.get("e2e_p50_ms"), s.get("e2e_p99_ms"), s.get("lost"),
                 s.get("duplicates")]  # fmt: skip
    elif o.name == "retry-storm.js":
        cells = [o.setup_data.get("users"), o.metric("deliveries", "count"),
                 o.metric("dlq_latency", "med"), o.metric("dlq_latency", "p(99)"),
                 o.metric("deliveries_not_dead_in_time", "count", 0), "-"]  # fmt: skip
    else:
        cells = [o.setup_data.get("users"), o.metric("notifications_expected", "count"), o.metric("e2e_latency", "med"),
                 o.metric("e2e_latency", "p(99)"), o.metric("notifications_lost", "count", 0),
                 o.metric("notifications_duplicate", "count", 0)]  # fmt: skip
    text = [str(c) if not isinstance(c, float) else _ms(c) for c in cells]
    text = ["-" if c == "None" else c for c in text]
    return [o.name, verdict, *text, "; ".join(o.crossed) or "-"]


# The figures each script's thresholds were calibrated on (see their headers): printed for recalibration.
FIGURES = {
    "websocket-storm.js": [
        ("ws_pong_rtt", "p(99)"), ("ws_connecting", "p(95)"), ("ws_registration", "p(95)"), ("e2e_latency", "p(99)"),
    ],
    "notification-fanout.js": [("e2e_latency", "p(99)"), ("ws_connecting", "p(95)"), ("producer_lag", "max")],
    "reconnect-chaos.js": [("e2e_latency", "p(99)"), ("ws_reconnects", "count"), ("producer_lag", "max")],
    "retry-storm.js": [("dlq_latency", "max"), ("retry_rate_peak_per_s", "max"), ("retry_rate_mean_per_s", "max")],
}


def figures(o: Outcome) -> dict[str, object]:
    if o.name == "locust":
        s = o.metrics.get("summary", {})
        return {k: s.get(k) for k in ("p99_ms", "e2e_p99_ms", "requests", "failures")}
    return {f"{m} {stat}": o.metric(m, stat) for m, stat in FIGURES.get(o.name, [])}


def table(outcomes: list[Outcome]) -> str:
    head = ["gate", "result", "users", "messages", "p50 ms", "p99 ms", "lost", "dups", "failed thresholds"]
    rows = [head, *(row(o) for o in outcomes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("p50/p99: end-to-end latency (payload timestamp to frame); retry-storm: accepted to DLQ, and its")
    lines.append("messages are webhook deliveries, lost = deliveries not dead in the DLQ within the bound.")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument("--profile", choices=["ci", "default"], default="ci", help="the scripts' profile (default: ci)")
    p.add_argument("--only", default="", help="comma-separated gate names (script file names, locust)")
    p.add_argument("--base-url", default="", help="comma-separated gateway URLs of a running stack (no stack)")
    p.add_argument("--sink-url", default="", help="with --base-url: the failing downstream for retry-storm.js")
    p.add_argument("--keep-logs", action="store_true", help="keep the stack's logs (kept anyway when a gate failed)")
    args = p.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()} or None
    started = time.monotonic()
    if args.base_url:
        outcomes = run_gates(args.base_url.split(","), args.sink_url, only, args.profile)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="notiflow-load-"))
        with FailingSink() as sink, dev_stack(args.gateways, sink.host, workdir) as urls:
            print(f"stack up: {', '.join(urls)} (logs {workdir})", flush=True)
            outcomes = run_gates(urls, sink.url, only, args.profile)
        if args.keep_logs or not all(o.passed for o in outcomes):
            print(f"stack logs kept in {workdir}/.notiflow/dev/logs", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    failed = [o for o in outcomes if not o.passed]
    for o in failed:
        print(f"\n===== {o.name} failed (exit {o.returncode}); its output:\n{o.output[-6000:]}")
    print(f"\nload gates ({time.monotonic() - started:.0f} s):\n{table(outcomes)}")
    print(json.dumps({
        "gates": {o.name: o.passed for o in outcomes}, "failed": [o.name for o in failed],
        "figures": {o.name: figures(o) for o in outcomes},
    }))
    return 1 if failed or not outcomes else 0


if __name__ == "__main__":
    sys.exit(main())
