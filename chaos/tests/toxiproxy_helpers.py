"""Shared by the Toxiproxy-compatible server's tests: local upstream TCP servers, the server as a child process,
and socket helpers that measure what goes through a proxy.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from toxiproxy.proxy import Proxy

REPO = Path(__file__).resolve().parents[2]
IO_TIMEOUT_S = 5.0
BLOB = bytes(range(256)) * 400  # 102,400 bytes, a recognisable pattern


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        # A reset is what the reset_peer and timeout tests do to it on purpose: not an error of the echo.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class Blob(socketserver.BaseRequestHandler):
    """Sends the server's payload, then closes."""

    def handle(self) -> None:
        self.request.sendall(self.server.payload)  # type: ignore[attr-defined]
        self.request.shutdown(socket.SHUT_WR)
        self.request.settimeout(IO_TIMEOUT_S)
        try:
            while self.request.recv(65536):  # until the proxy closes its side
                pass
        except OSError:
            pass


@contextlib.contextmanager
def tcp_server(handler: type[socketserver.BaseRequestHandler], payload: bytes = b"") -> Iterator[str]:
    """A threaded upstream on a free loopback port; yields its ``host:port``."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.payload = payload  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def toxiproxy_process() -> Iterator[str]:
    """``python -m chaos.toxiproxy`` on a port it picks itself (no race for a free port); yields the API URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaos.toxiproxy", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the API accepts connections
        assert "listening on" in line, f"server did not start: {line!r}, exit {proc.poll()}"
        yield "http://" + line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=10) == 0, "SIGTERM must stop the server cleanly"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def connect(proxy: Proxy) -> socket.socket:
    host, port = proxy.listen.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=IO_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip_s(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = sock.recv(65536)
        assert data, "connection closed during a round trip"
        got += data
    assert got == payload
    return time.monotonic() - started


def read_to_eof(sock: socket.socket) -> tuple[bytes, list[int], float]:
    """Everything until EOF, the size of each read, and the time EOF came (monotonic)."""
    chunks: list[bytes] = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks), [len(c) for c in chunks], time.monotonic()


def baseline_s(sock: socket.socket) -> float:
    return statistics.median(round_trip_s(sock) for _ in range(5))
