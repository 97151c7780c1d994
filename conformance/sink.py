"""A webhook downstream in the test process: answers by path and records every call with its arrival time
and whether its Standard Webhooks signature verifies (with the reference ``standardwebhooks`` package)
under the sink's secret.

``/ok/<tag>`` answers 200, ``/fail/<tag>`` 500 (transient), ``/reject/<tag>`` 400 (permanent); for the chaos
suite's downstream faults also ``/slow/<tag>`` (200 after ``SLOW_S``) and ``/flaky/<tag>`` (500 to the first call of
each delivery, by the body's ``id`` and ``user_id``, 200 to the later ones), and ``/switch/<tag>``, which answers
as the kind ``modes[tag]`` names at the moment of the call (``ok`` until set): a downstream that dies and comes back.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

_STATUS = {"ok": 200, "fail": 500, "reject": 400, "slow": 200}
#: How long ``/slow/`` takes to answer, seconds: slower than a healthy downstream, within the platform's timeout.
SLOW_S = 1.0


@dataclass(frozen=True, slots=True)
class Call:
    path: str
    at_s: float  # time.monotonic() at arrival
    body: Any
    signature_ok: bool = False


def new_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError):
        return False
    return True


class WebhookSink:
    """A threaded HTTP server on 127.0.0.1; ``host`` is what NOTIFLOW_WEBHOOK_ALLOWED_HOSTS must allow."""

    def __init__(self, secret: str | None = None) -> None:
        #: What the platform must sign with: NOTIFLOW_WEBHOOK_SECRET of a cluster this suite starts.
        self.secret = secret or new_secret()
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._seen: set[tuple[str, ...]] = set()
        self.modes: dict[str, str] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                signed = signature_ok(sink.secret, {k.lower(): v for k, v in self.headers.items()}, raw)
                kind, _, tag = self.path.strip("/").partition("/")
                if kind == "switch":
                    kind = sink.modes.get(tag, "ok")
                status = _STATUS.get(kind, 404)
                with sink._lock:
                    sink._calls.append(Call(self.path, time.monotonic(), body, signed))
                    if kind == "flaky":
                        ids = (body.get("id"), body.get("user_id")) if isinstance(body, dict) else (None, None)
                        key = (self.path, str(ids[0]), str(ids[1]))
                        status = 200 if key in sink._seen else 500
                        sink._seen.add(key)
                if kind == "slow":
                    time.sleep(SLOW_S)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            # A burst of webhook calls must not overflow the listen queue (the default is 5): a dropped SYN
            # costs the caller a one-second retransmit that would look like the platform's delay.
            request_queue_size = 256
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, kind: str, tag: str) -> str:
        return f"http://{self.host}/{kind}/{tag}"

    def calls(self, kind: str, tag: str) -> list[Call]:
        path = f"/{kind}/{tag}"
        with self._lock:
            return [c for c in self._calls if c.path == path]

    def start(self) -> WebhookSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
