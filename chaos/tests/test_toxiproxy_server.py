"""The Toxiproxy-compatible server, driven only through ``toxiproxy-python`` (and plain httpx for status codes the
client hides), measured on real bytes through local TCP servers: each toxic does what Toxiproxy's documentation says.
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from toxiproxy import Toxiproxy
from toxiproxy.exceptions import NotFound, ProxyExists
from toxiproxy.proxy import Proxy

REPO = Path(__file__).resolve().parents[2]
IO_TIMEOUT_S = 5.0

pytestmark = pytest.mark.timeout(20)


# Upstream servers ------------------------------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Blob(socketserver.BaseRequestHandler):
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


def _serve(handler: type[socketserver.BaseRequestHandler], payload: bytes = b"") -> Iterator[str]:
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


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[str]:
    yield from _serve(_Echo)


BLOB = bytes(range(256)) * 400  # 102,400 bytes, a recognisable pattern


@pytest.fixture(scope="module")
def blob_upstream() -> Iterator[str]:
    yield from _serve(_Blob, BLOB)


@pytest.fixture(scope="module")
def ten_kb_upstream() -> Iterator[str]:
    yield from _serve(_Blob, BLOB[:10_000])


@pytest.fixture(scope="module")
def bye_upstream() -> Iterator[str]:
    yield from _serve(_Blob, b"bye")


# The server under test -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
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


@pytest.fixture
def toxiproxy(api_url: str) -> Iterator[Toxiproxy]:
    host, port = api_url.removeprefix("http://").rsplit(":", 1)
    client = Toxiproxy()
    client.update_api_consumer(host, int(port))
    yield client
    client.destroy_all()


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=IO_TIMEOUT_S) as client:
        yield client


# Helpers ---------------------------------------------------------------------------------------------------------


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


# Toxics on real bytes --------------------------------------------------------------------------------------------


def test_latency_adds_its_delay_to_each_round_trip_of_an_open_connection(
    toxiproxy: Toxiproxy, echo_upstream: str
) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="latency")
    with connect(proxy) as sock:
        base = baseline_s(sock)
        proxy.add_toxic(type="latency", attributes={"latency": 300})  # on the connection that is already open
        delayed = [round_trip_s(sock) for _ in range(3)]
        assert all(0.3 <= trip <= base + 0.65 for trip in delayed), (base, delayed)
        proxy.add_toxic(type="latency", stream="upstream", attributes={"latency": 200})
        both = round_trip_s(sock)
        assert 0.5 <= both <= base + 0.9, (base, both)  # the two directions add up
        proxy.destroy_toxic("latency_downstream")
        proxy.destroy_toxic("latency_upstream")
        assert round_trip_s(sock) < base + 0.15


def test_bandwidth_10_kb_per_s_takes_about_a_second_for_10_kb(toxiproxy: Toxiproxy, ten_kb_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=ten_kb_upstream, name="bandwidth")
    with connect(proxy) as sock:
        started = time.monotonic()
        assert read_to_eof(sock)[2] - started < 0.3  # without the toxic
    proxy.add_toxic(type="bandwidth", attributes={"rate": 10})
    with connect(proxy) as sock:
        started = time.monotonic()
        data, _, eof_at = read_to_eof(sock)
    assert data == BLOB[:10_000]
    assert 0.9 <= eof_at - started <= 1.6, eof_at - started


def test_a_disabled_proxy_drops_open_connections_and_refuses_new_ones(toxiproxy: Toxiproxy, echo_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="outage")
    with connect(proxy) as sock:
        round_trip_s(sock)
        proxy.disable()
        with contextlib.suppress(ConnectionResetError):  # a FIN (Toxiproxy) or a reset both drop it
            assert sock.recv(100) == b""
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    assert toxiproxy.get_proxy("outage").enabled is False
    proxy.enable()
    with connect(proxy) as sock:  # the same listen address again
        round_trip_s(sock)


def test_timeout_drops_the_data_and_closes_after_the_timeout(toxiproxy: Toxiproxy, echo_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="timeout")
    proxy.add_toxic(type="timeout", attributes={"timeout": 500})
    started = time.monotonic()
    with connect(proxy) as sock:
        sock.sendall(b"ping")
        data, _, eof_at = read_to_eof(sock)
    assert data == b""
    assert 0.45 <= eof_at - started <= 1.5, eof_at - started


def test_timeout_zero_holds_the_connection_until_the_toxic_is_removed(toxiproxy: Toxiproxy, echo_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="blackhole")
    with connect(proxy) as sock:
        round_trip_s(sock)
        proxy.add_toxic(type="timeout", stream="upstream", attributes={"timeout": 0})
        sock.sendall(b"lost")
        sock.settimeout(0.7)
        with pytest.raises(TimeoutError):  # neither data nor a close while the toxic is there
            sock.recv(100)
        sock.settimeout(IO_TIMEOUT_S)
        removed_at = time.monotonic()
        proxy.destroy_toxic("timeout_upstream")  # as in Toxiproxy: the dropped bytes broke the stream, it closes
        data, _, eof_at = read_to_eof(sock)
    assert data == b""
    assert eof_at - removed_at < 1.0


def test_reset_peer_resets_the_connection_after_its_timeout(toxiproxy: Toxiproxy, echo_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="reset")
    proxy.add_toxic(type="reset_peer", attributes={"timeout": 200})
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        with pytest.raises(ConnectionResetError):
            read_to_eof(sock)
        assert 0.18 <= time.monotonic() - started <= 1.2


def test_slicer_cuts_the_stream_into_many_small_reads(toxiproxy: Toxiproxy, blob_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=blob_upstream, name="slicer")
    proxy.add_toxic(type="limit_data", stream="downstream", name="cut", attributes={"bytes": 20_000})
    with connect(proxy) as sock:
        whole, whole_reads, _ = read_to_eof(sock)
    proxy.add_toxic(
        type="slicer", stream="downstream", attributes={"average_size": 100, "size_variation": 20, "delay": 1000}
    )
    with connect(proxy) as sock:
        sliced, reads, _ = read_to_eof(sock)
    assert whole == sliced == BLOB[:20_000]
    assert len(reads) >= 60, (len(whole_reads), len(reads))  # ~200 slices of 80..120 bytes, 1 ms apart
    assert statistics.median(reads) <= 240, statistics.median(reads)


def test_limit_data_closes_after_exactly_that_many_bytes(toxiproxy: Toxiproxy, blob_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=blob_upstream, name="limit")
    proxy.add_toxic(type="limit_data", attributes={"bytes": 1000})
    with connect(proxy) as sock:
        data, _, _ = read_to_eof(sock)
    assert data == BLOB[:1000]


def test_slow_close_delays_the_close_not_the_data(toxiproxy: Toxiproxy, bye_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=bye_upstream, name="slow_close")
    proxy.add_toxic(type="slow_close", attributes={"delay": 500})
    started = time.monotonic()
    with connect(proxy) as sock:
        first = sock.recv(100)
        data_at = time.monotonic()
        rest, _, eof_at = read_to_eof(sock)
    assert first + rest == b"bye"
    assert data_at - started < 0.3, data_at - started
    assert 0.45 <= eof_at - started <= 1.5, eof_at - started


def test_toxicity_zero_never_applies(toxiproxy: Toxiproxy, echo_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="toxicity")
    proxy.add_toxic(type="latency", toxicity=0.0, attributes={"latency": 1000})
    for _ in range(5):  # decided per connection
        with connect(proxy) as sock:
            assert round_trip_s(sock) < 0.5


def test_removing_a_toxic_releases_what_it_held_in_order(toxiproxy: Toxiproxy, echo_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="heal")
    with connect(proxy) as sock:
        round_trip_s(sock)
        proxy.add_toxic(type="latency", attributes={"latency": 10_000})
        for word in (b"one,", b"two,", b"three"):
            sock.sendall(word)
        healed_at = time.monotonic()
        proxy.destroy_toxic("latency_downstream")
        got = b""
        while len(got) < len(b"one,two,three"):
            got += sock.recv(100)
        assert got == b"one,two,three" and time.monotonic() - healed_at < 1.0


def test_changing_toxics_on_a_busy_connection_never_loses_or_reorders_a_byte(
    toxiproxy: Toxiproxy, echo_upstream: str
) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="churn")
    payload = bytes(random.Random(7).randbytes(400_000))
    received = bytearray()
    with connect(proxy) as sock:

        def receive() -> None:
            while len(received) < len(payload):
                data = sock.recv(65536)
                if not data:
                    return
                received.extend(data)

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        toxics = [
            ("latency", "downstream", {"latency": 20, "jitter": 10}),
            ("slicer", "upstream", {"average_size": 500, "size_variation": 100, "delay": 50}),
            ("bandwidth", "downstream", {"rate": 2000}),
            ("latency", "upstream", {"latency": 5}),
        ]
        for i in range(0, len(payload), 4000):
            sock.sendall(payload[i : i + 4000])
            kind, stream, attributes = toxics[(i // 4000) % len(toxics)]
            name = f"{kind}_{stream}"
            if proxy.get_toxic(name) is None:
                proxy.add_toxic(type=kind, stream=stream, attributes=attributes)
            else:
                proxy.destroy_toxic(name)
        toxiproxy.reset()
        reader.join(timeout=10)
    assert len(received) == len(payload) and bytes(received) == payload


# The API through the client --------------------------------------------------------------------------------------


def test_a_duplicate_toxic_is_409_and_an_unknown_proxy_404(toxiproxy: Toxiproxy, echo_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="api")
    proxy.add_toxic(type="latency", attributes={"latency": 10})
    with pytest.raises(ProxyExists):
        proxy.add_toxic(type="latency", attributes={"latency": 20})
    toxic = proxy.get_toxic("latency_downstream")
    assert toxic is not None and toxic.attributes == {"latency": 10, "jitter": 0} and toxic.toxicity == 1.0
    proxy.destroy()
    with pytest.raises(NotFound):
        proxy.add_toxic(type="latency")
    with pytest.raises(NotFound):
        proxy.destroy()


def test_reset_enables_every_proxy_and_removes_every_toxic(toxiproxy: Toxiproxy, echo_upstream: str) -> None:
    first = toxiproxy.create(upstream=echo_upstream, name="first")
    second = toxiproxy.create(upstream=echo_upstream, name="second")
    first.add_toxic(type="latency", attributes={"latency": 1000})
    first.add_toxic(type="timeout", stream="upstream", attributes={"timeout": 0})
    second.disable()
    assert toxiproxy.reset() is True
    assert first.toxics() == {} and second.toxics() == {}
    assert all(proxy.enabled for proxy in toxiproxy.proxies().values())
    for proxy in (first, second):
        with connect(proxy) as sock:
            assert round_trip_s(sock) < 0.5


# Status codes and shapes the client hides -----------------------------------------------------------------------


@pytest.fixture
def clean(http: httpx.Client) -> Iterator[httpx.Client]:
    yield http
    for name in http.get("/proxies").json():
        http.delete(f"/proxies/{name}")


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == status, body
    return str(body["error"])


def test_proxy_crud_status_codes_and_shapes(clean: httpx.Client, echo_upstream: str) -> None:
    http = clean
    created = http.post("/proxies", json={"name": "crud", "upstream": echo_upstream})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"name", "listen", "upstream", "enabled", "toxics"}
    assert body["enabled"] is True and body["toxics"] == [] and not body["listen"].endswith(":0")
    assert _error(http.post("/proxies", json={"name": "crud", "upstream": echo_upstream}), 409) == (
        "proxy already exists"
    )
    assert "upstream" in _error(http.post("/proxies", json={"name": "x"}), 400)
    assert "bad request body" in _error(http.post("/proxies", content=b"{not json"), 400)
    assert set(http.get("/proxies").json()) == {"crud"}
    assert _error(http.get("/proxies/nope"), 404) == "proxy not found"
    patched = http.patch("/proxies/crud", json={"enabled": False})
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    assert patched.json()["listen"] == body["listen"]
    assert http.delete("/proxies/crud").status_code == 204
    assert _error(http.delete("/proxies/crud"), 404) == "proxy not found"
    assert http.get("/version").json()["version"].startswith("2.")
    assert _error(http.put("/proxies", json={}), 405)


def test_toxic_status_codes_and_shapes(clean: httpx.Client, echo_upstream: str) -> None:
    http = clean
    http.post("/proxies", json={"name": "tox", "upstream": echo_upstream}).raise_for_status()
    added = http.post("/proxies/tox/toxics", json={"type": "latency", "attributes": {"latency": 5}})
    assert added.status_code == 200
    assert added.json() == {
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 5, "jitter": 0},
    }
    assert _error(http.post("/proxies/tox/toxics", json={"type": "latency"}), 409) == "toxic already exists"
    assert _error(http.post("/proxies/tox/toxics", json={"type": "nope"}), 400) == "invalid toxic type"
    assert "stream" in _error(http.post("/proxies/tox/toxics", json={"type": "latency", "stream": "sideways"}), 400)
    bad = {"type": "bandwidth", "attributes": {"rate": "fast"}}
    assert "rate" in _error(http.post("/proxies/tox/toxics", json=bad), 400)
    assert "toxicity" in _error(http.post("/proxies/tox/toxics", json={"type": "slicer", "toxicity": 2}), 400)
    assert _error(http.post("/proxies/nope/toxics", json={"type": "latency"}), 404) == "proxy not found"
    updated = http.patch("/proxies/tox/toxics/latency_downstream", json={"attributes": {"jitter": 2}})
    assert updated.json()["attributes"] == {"latency": 5, "jitter": 2}
    assert http.get("/proxies/tox/toxics").json() == [updated.json()]
    assert http.get("/proxies/tox").json()["toxics"] == [updated.json()]
    assert _error(http.get("/proxies/tox/toxics/nope"), 404) == "toxic not found"
    assert http.delete("/proxies/tox/toxics/latency_downstream").status_code == 204
    assert _error(http.delete("/proxies/tox/toxics/latency_downstream"), 404) == "toxic not found"
    assert http.post("/reset").status_code == 204


def test_populate_creates_keeps_and_replaces(clean: httpx.Client, echo_upstream: str, blob_upstream: str) -> None:
    http = clean
    first = http.post("/populate", json=[{"name": "pop", "upstream": echo_upstream}])
    assert first.status_code == 201
    [proxy] = first.json()["proxies"]
    again = http.post("/populate", json=[{"name": "pop", "upstream": echo_upstream, "listen": proxy["listen"]}])
    assert again.status_code == 201 and again.json()["proxies"] == [proxy]  # same listen and upstream: kept
    moved = http.post("/populate", json=[{"name": "pop", "upstream": blob_upstream, "listen": proxy["listen"]}])
    assert moved.status_code == 201 and moved.json()["proxies"][0]["upstream"] == blob_upstream
    assert "name at proxy 2" in _error(http.post("/populate", json=[{"name": "a", "upstream": "x:1"}, {}]), 400)
    assert "a" not in http.get("/proxies").json()  # the whole list is checked before anything is created


def test_keep_alive_serves_many_requests_on_one_connection(api_url: str) -> None:
    host, port = api_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=IO_TIMEOUT_S) as sock:
        for _ in range(3):
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += sock.recv(4096)
            assert b'"version"' in body
