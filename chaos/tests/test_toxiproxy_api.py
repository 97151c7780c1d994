"""Status codes and JSON shapes of the Toxiproxy-compatible server's API, through plain httpx (the
``toxiproxy-python`` client hides most of them): Toxiproxy 2.x's codes, errors as ``{"error", "status"}``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from chaos.tests.toxiproxy_helpers import (
    BLOB,
    IO_TIMEOUT_S,
    Blob,
    Echo,
    round_trip_s,
    tcp_server,
    toxiproxy_process,
)

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    with toxiproxy_process() as url:
        yield url


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[str]:
    with tcp_server(Echo) as address:
        yield address


@pytest.fixture(scope="module")
def blob_upstream() -> Iterator[str]:
    with tcp_server(Blob, BLOB) as address:
        yield address


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=IO_TIMEOUT_S) as client:
        yield client
        for name in client.get("/proxies").json():
            client.delete(f"/proxies/{name}")


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == status, body
    return str(body["error"])


def test_proxy_crud_status_codes_and_shapes(http: httpx.Client, echo_upstream: str) -> None:
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
    assert set(http.get("/proxies").json()) == {"crud"}  # the refused ones were not created
    assert _error(http.get("/proxies/nope"), 404) == "proxy not found"
    patched = http.patch("/proxies/crud", json={"enabled": False})
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    assert patched.json()["listen"] == body["listen"]
    empty = http.post("/proxies", json={"name": "anywhere", "upstream": echo_upstream, "listen": ""})
    assert empty.status_code == 201 and empty.json()["listen"].startswith("127.0.0.1:")
    assert http.delete("/proxies/crud").status_code == 204
    assert _error(http.delete("/proxies/crud"), 404) == "proxy not found"
    assert http.get("/version").json()["version"].startswith("2.")
    assert _error(http.put("/proxies", json={}), 405)
    assert _error(http.get("/nowhere"), 404)


def test_toxic_status_codes_and_shapes(http: httpx.Client, echo_upstream: str) -> None:
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


def test_populate_creates_keeps_and_replaces(http: httpx.Client, echo_upstream: str, blob_upstream: str) -> None:
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


def test_updating_a_toxic_changes_the_connections_already_open(http: httpx.Client, echo_upstream: str) -> None:
    listen = http.post("/proxies", json={"name": "live", "upstream": echo_upstream}).json()["listen"]
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=IO_TIMEOUT_S) as sock:
        http.post("/proxies/live/toxics", json={"type": "latency", "attributes": {"latency": 400}}).raise_for_status()
        assert round_trip_s(sock) >= 0.4
        http.post("/proxies/live/toxics/latency_downstream", json={"attributes": {"latency": 0}}).raise_for_status()
        assert round_trip_s(sock) < 0.2
        http.patch("/proxies/live/toxics/latency_downstream", json={"toxicity": 0.0, "attributes": {"latency": 900}})
        assert round_trip_s(sock) < 0.2  # toxicity 0: the updated toxic no longer applies
