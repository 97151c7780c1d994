"""The live dashboard: its figures aggregate every node (GET /dashboard/stats), and the page, driven in
headless Chromium, loads, shows numbers that move when notifications are sent, and a replay button
empties a DLQ entry. The browser test skips where no Chromium (or Playwright) is installed."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from helpers import wait_for_sync
from pydantic import SecretStr
from websockets.sync.client import ClientConnection, connect

SECRET = SecretStr("whsec_" + base64.b64encode(b"dashboard-test-secret-32-bytes!!").decode())
pytestmark = pytest.mark.timeout(180)

CHROMIUM = os.environ.get("NOTIFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


class Downstream:
    """A webhook sink whose answer the test switches (500 until it is told to accept)."""

    def __init__(self) -> None:
        self.status = 500
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(sink.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Downstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    with Downstream() as sink:
        yield sink


def http_client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10)


def send(http: httpx.Client, gw: str, user: str, n: int, webhook: str | None = None) -> list[str]:
    ids = []
    for i in range(n):
        body: dict[str, Any] = {"user_id": user, "event": "dash.test", "payload": {"i": i}}
        if webhook:
            body["webhook_url"] = webhook
        r = http.post(f"{gw}/notifications", json=body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def receive(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    return [orjson.loads(ws.recv(timeout=15)) for _ in range(n)]


def test_stats_aggregate_every_node(stack) -> None:  # type: ignore[no-untyped-def]
    dev = stack(gateways=2, stats_interval_s=0.2)
    a, b = dev.gateway_urls
    users = [f"d-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    with http_client() as http, connect(f"{a.replace('http', 'ws')}/ws/{users[0]}", proxy=None) as wa, \
            connect(f"{b.replace('http', 'ws')}/ws/{users[1]}", proxy=None) as wb:
        def both_online() -> dict[str, Any]:
            stats = http.get(f"{a}/dashboard/stats").json()
            assert [g["users"] for g in stats["gateways"]] == [1, 1], stats["gateways"]
            return stats

        first = wait_for_sync(both_online, timeout_s=15, interval_s=0.1)
        assert {g["node"] for g in first["gateways"]} == {dev.node_ids["gateway-0"], dev.node_ids["gateway-1"]}
        assert first["roles"] == {"gateway": 2, "stream-worker": 1, "retry-worker": 1}
        assert set(first["store"]) >= {"stream_length", "stream_pending", "group_lag", "retry_scheduled", "dlq_entries"}
        send(http, a, users[0], 3)
        send(http, b, users[1], 2)
        for ws, n in ((wa, 3), (wb, 2)):
            frames = receive(ws, n)
            ws.send(orjson.dumps({"type": "ack", "ids": [f["id"] for f in frames]}).decode())

        def moved() -> dict[str, Any]:
            # Asked of gateway B: the totals are every node's, whichever gateway answers.
            stats = http.get(f"{b}/dashboard/stats").json()
            t, t0 = stats["totals"], first["totals"]
            assert t["accepted"] >= t0["accepted"] + 5
            assert t["frames_sent"] >= t0["frames_sent"] + 5
            assert t["acks"] >= t0["acks"] + 5
            count = dict((str(le), c) for le, c in stats["latency_buckets"])["+Inf"]
            assert count >= dict((str(le), c) for le, c in first["latency_buckets"])["+Inf"] + 5
            return stats

        wait_for_sync(moved, timeout_s=20, interval_s=0.2)
        page = http.get(f"{a}/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        # Self-contained: no script, style or image from anywhere else.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)


def _browser() -> Any:
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[browser]')")
    return sync_playwright


@contextlib.contextmanager
def dashboard_page(url: str) -> Iterator[Any]:
    with _browser()() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            # bypass_csp: the test's own wait_for_function predicates are evaluated strings, which the page's
            # CSP forbids; that the page itself runs under its CSP is the next test's subject.
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
            page.goto(url)
            page.wait_for_selector("#status:has-text('live')", timeout=15_000)
            yield page
        finally:
            browser.close()


def number(text: str) -> float:
    digits = re.sub(r"[^0-9.]", "", text)
    return float(digits) if digits else 0.0


def test_dashboard_in_chromium(stack, downstream: Downstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _browser()  # skip before starting a stack where there is no browser
    dev = stack(webhook_allowed_hosts=[downstream.host], webhook_secret=SECRET, webhook_allow_private=True,
                max_retries=0, stats_interval_s=0.25)
    gw = dev.gateway_urls[0]
    user = f"c-{uuid.uuid4().hex[:6]}"
    with http_client() as http, connect(f"{gw.replace('http', 'ws')}/ws/{user}", proxy=None) as ws, \
            dashboard_page(f"{gw}/dashboard") as page:
        accepted_before = number(page.inner_text("#accepted-total"))
        # Each notification is delivered over the socket; its webhook fails once and is dead-lettered.
        ids = send(http, gw, user, 4, webhook=f"http://{downstream.host}/hook")
        frames = receive(ws, 4)
        ws.send(orjson.dumps({"type": "ack", "ids": [f["id"] for f in frames]}).decode())

        page.wait_for_function(
            f"Number(document.getElementById('accepted-total').textContent.replace(/[^0-9.]/g, '')) >= "
            f"{accepted_before + 4}", timeout=15_000,
        )
        page.wait_for_function(
            "document.getElementById('latency').textContent.includes('ms')", timeout=15_000
        )
        assert page.inner_text("#users-total") == "1"
        page.wait_for_selector("#dlq tr[data-id]", timeout=20_000)
        page.wait_for_function("document.querySelectorAll('#dlq tr[data-id]').length >= 4", timeout=20_000)
        listed = http.get(f"{gw}/dlq").json()["entries"]
        assert {e["notification_id"] for e in listed} == set(ids)
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # The downstream heals; replaying one entry from the page delivers it and empties that entry.
        downstream.status = 200
        entry = listed[0]["id"]
        page.click(f"button.replay[data-id='{entry}']")
        page.wait_for_selector(f"#dlq tr[data-id='{entry}']", state="detached", timeout=10_000)

        def replayed() -> bool:
            left = {e["id"] for e in http.get(f"{gw}/dlq").json()["entries"]}
            assert entry not in left and len(left) == 3
            status = http.get(f"{gw}/notifications/{listed[0]['notification_id']}").json()
            return bool(status["deliveries"][0]["webhook_status"] == "succeeded")

        wait_for_sync(replayed, timeout_s=20, interval_s=0.2)
        page.wait_for_function("document.getElementById('dlq-total').textContent === '3'", timeout=10_000)
        assert page.locator("#dlq tr[data-id]").count() == 3


def test_the_page_runs_under_its_csp_and_takes_the_key_out_of_the_address_bar(stack) -> None:  # type: ignore[no-untyped-def]
    """Issue 25, findings 6 and 7: the key given as ?token= leaves the address bar once read, and the page's
    own script runs under its Content-Security-Policy (inline script admitted by hash) with no violation."""
    _browser()
    admin = f"dash-admin-{uuid.uuid4().hex}"
    dev = stack(stream_workers=0, retry_workers=0, auth="on", api_keys=[SecretStr(admin)], stats_interval_s=0.25)
    violations: list[str] = []
    with _browser()() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text
                    else None)
            page.goto(f"{dev.gateway_urls[0]}/dashboard?token={admin}")
            page.wait_for_selector("#status:has-text('live')", timeout=15_000)  # stats fetched with the key
            assert "token" not in page.url and admin not in page.url, page.url
        finally:
            browser.close()
    assert violations == [], violations
