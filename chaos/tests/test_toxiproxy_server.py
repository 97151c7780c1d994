"""The Toxiproxy-compatible server, driven only through ``toxiproxy-python``, measured on real bytes through local
TCP servers: each toxic does what Toxiproxy's documentation says, also on connections that are already open.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.exceptions import NotFound, ProxyExists

from chaos.tests.toxiproxy_helpers import (
    BLOB,
    IO_TIMEOUT_S,
    Blob,
    Echo,
    baseline_s,
    connect,
    read_to_eof,
    round_trip_s,
    tcp_server,
    toxiproxy_process,
)

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    with toxiproxy_process() as url:
        yield url


@pytest.fixture
def toxiproxy(api_url: str) -> Iterator[Toxiproxy]:
    host, port = api_url.removeprefix("http://").rsplit(":", 1)
    client = Toxiproxy()
    client.update_api_consumer(host, int(port))
    yield client
    client.destroy_all()


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[str]:
    with tcp_server(Echo) as address:
        yield address


@pytest.fixture(scope="module")
def blob_upstream() -> Iterator[str]:
    with tcp_server(Blob, BLOB) as address:
        yield address


@pytest.fixture(scope="module")
def ten_kb_upstream() -> Iterator[str]:
    with tcp_server(Blob, BLOB[:10_000]) as address:
        yield address


@pytest.fixture(scope="module")
def bye_upstream() -> Iterator[str]:
    with tcp_server(Blob, b"bye") as address:
        yield address


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


def test_jitter_spreads_the_latency_within_its_bounds(toxiproxy: Toxiproxy, echo_upstream: str) -> None:
    proxy = toxiproxy.create(upstream=echo_upstream, name="jitter")
    proxy.add_toxic(type="latency", attributes={"latency": 200, "jitter": 100})
    with connect(proxy) as sock:
        trips = [round_trip_s(sock) for _ in range(6)]
    assert all(0.1 <= trip <= 0.3 + 0.25 for trip in trips), trips
    assert max(trips) - min(trips) > 0.01, trips  # six draws from +/- 100 ms are not all the same


def test_an_unreachable_upstream_closes_the_client(toxiproxy: Toxiproxy) -> None:
    with tcp_server(Echo) as address:
        pass  # the port is now closed
    proxy = toxiproxy.create(upstream=address, name="nowhere")
    with connect(proxy) as sock:
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 1.0


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
    payload = random.Random(7).randbytes(240_000)
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
