"""I11 security, part 2: limits against abuse and the webhook rules, black-box.

- A WebSocket frame over the frame bound (64 KiB by default) closes the socket with 1009 before its
  payload is read: proven on raw bytes, with a frame header that announces 16 MiB followed by 1 KiB.
- A binary frame, or an ack naming more than the ack bound (1000 ids), gets a ``bad_frame`` error frame and
  the socket stays open.
- A user's sockets are bounded (10 by default across the cluster): one more is closed with 4429.
- Acks awaiting their commit are bounded per socket: over the bound, 1008 (a dedicated cluster with a small
  bound, so that the check does not depend on commit timing).
- A browser handshake from an origin that is not allowed is refused (HTTP 403); no Origin is allowed.
- Webhooks: a host allowed without a port allows only the scheme's default port (422 otherwise); a host
  that resolves to a loopback address is refused at send time (the delivery is dead-lettered as rejected,
  the downstream never called) unless private addresses are allowed; every call is signed so that the
  Standard Webhooks reference library verifies it with the configured secret.

The shared-cluster checks assume the documented defaults; the dedicated cluster is only started here.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import struct
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conformance.client import until
from conformance.cluster import Target
from conformance.sink import WebhookSink

pytestmark = pytest.mark.timeout(90)

FRAME_BOUND = 64 * 1024
ACK_IDS_BOUND = 1000
SOCKETS_PER_USER = 10


def _ws(base_url: str, user: str) -> str:
    return base_url.replace("http://", "ws://", 1) + f"/ws/{user}"


async def _open(base_url: str, user: str, **kwargs: object) -> ClientConnection:
    return await connect(_ws(base_url, user), open_timeout=10, proxy=None, **kwargs)  # type: ignore[arg-type]


async def _frame(ws: ClientConnection, timeout_s: float = 10) -> dict[str, object]:
    frame: dict[str, object] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    return frame


async def _close_code(ws: ClientConnection, timeout_s: float = 10) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout_s)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def _pong(ws: ClientConnection) -> None:
    await ws.send('{"type":"ping"}')
    while (await _frame(ws)).get("type") != "pong":
        pass


# --- frames ----------------------------------------------------------------------------------------


async def _raw_socket(base_url: str, user: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake written by hand, so that the test controls every byte that follows."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws/{user} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.split(b"\r\n", 1)[0].split(b" ")[1] == b"101", head[:200]
    return reader, writer


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (never masked): its opcode and payload."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def test_a_frame_over_the_bound_closes_with_1009_before_its_payload_is_read(
    target: Target, run_id: str
) -> None:
    reader, writer = await _raw_socket(target.urls[0], f"{run_id}-big")
    try:
        announced = 16 * 1024 * 1024
        mask = os.urandom(4)
        writer.write(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", announced) + mask)
        writer.write(b"x" * 1024)  # 1 KiB of the 16 MiB: a server waiting for the rest would never answer
        await writer.drain()
        opcode, payload = await asyncio.wait_for(_read_frame(reader), 10)
        assert opcode == 0x8, f"expected a close frame, got opcode {opcode:#x}"
        assert struct.unpack("!H", payload[:2])[0] == 1009, payload
    finally:
        writer.close()


async def test_a_message_just_over_the_bound_is_refused_one_under_is_read(target: Target, run_id: str) -> None:
    ws = await _open(target.urls[0], f"{run_id}-edge")
    await ws.send("x" * (FRAME_BOUND - 100))  # read, and answered as a bad frame (not JSON)
    assert (await _frame(ws))["code"] == "bad_frame"
    await ws.send("x" * (FRAME_BOUND + 1))
    assert await _close_code(ws) == 1009


async def test_binary_frames_and_oversized_acks_get_bad_frame_and_the_socket_stays_open(
    target: Target, run_id: str
) -> None:
    ws = await _open(target.urls[0], f"{run_id}-bin")
    try:
        await ws.send(b"\x00\x01binary")
        error = await _frame(ws)
        assert (error["type"], error["code"]) == ("error", "bad_frame"), error
        ids = [str(i) for i in range(ACK_IDS_BOUND + 1)]
        await ws.send(orjson.dumps({"type": "ack", "ids": ids}).decode())
        error = await _frame(ws)
        assert (error["type"], error["code"]) == ("error", "bad_frame"), error
        await _pong(ws)
    finally:
        await ws.close()


async def test_one_socket_over_the_per_user_bound_is_closed_with_4429(target: Target, run_id: str) -> None:
    user = f"{run_id}-many"
    opened = [await _open(target.urls[i % len(target.urls)], user) for i in range(SOCKETS_PER_USER)]
    try:
        for ws in opened:
            await _pong(ws)  # each is registered
        extra = await _open(target.urls[-1], user)
        assert await _close_code(extra) == 4429
        await _pong(opened[0])  # the others are untouched
    finally:
        for ws in opened:
            await ws.close()
    # Closed sockets free their places (once the server has counted the closes: it may lag the client).
    async def reopened() -> bool:
        ws = await _open(target.urls[0], user)
        try:
            await _pong(ws)
        except ConnectionClosed:
            return False
        await ws.close()
        return True

    assert await until(reopened, 10, 0.2), "a closed socket's place was never freed"


# --- a dedicated cluster with small bounds and private webhook addresses refused ---------------------------


@pytest.fixture(scope="module")
def strict(start_cluster: Callable[..., Target], sink: WebhookSink) -> Iterator[Target]:
    target = start_cluster(
        "ack bound, origins and webhook address rules",
        gateways=1,
        stream_workers=1,
        retry_workers=1,
        env={
            "NOTIFLOW_WS_MAX_ACKS_IN_FLIGHT": "4",
            "NOTIFLOW_ALLOWED_ORIGINS": "https://app.example",
            # A bare host allows port 80 only; localhost with the sink's port resolves to a loopback address.
            "NOTIFLOW_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1,localhost:{sink.port}",
            "NOTIFLOW_WEBHOOK_SECRET": sink.secret,
            "NOTIFLOW_WEBHOOK_ALLOW_PRIVATE": "false",
            "NOTIFLOW_MAX_RETRIES": "1",
        },
    )
    yield target
    target.stop()


async def test_acks_over_the_in_flight_bound_close_with_1008(strict: Target, run_id: str) -> None:
    ws = await _open(strict.urls[0], f"{run_id}-flood")
    await _pong(ws)
    await ws.send(orjson.dumps({"type": "ack", "ids": [str(uuid.uuid4()) for _ in range(5)]}).decode())
    assert await _close_code(ws) == 1008


async def test_handshakes_from_origins_not_allowed_are_refused(strict: Target, run_id: str) -> None:
    user = f"{run_id}-origin"
    with pytest.raises(InvalidStatus) as refused:
        await _open(strict.urls[0], user, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    for origin in ("https://app.example", None):  # allowed; no Origin (not a browser)
        ws = await _open(strict.urls[0], user, **({"origin": origin} if origin else {}))
        await _pong(ws)
        await ws.close()


async def test_a_host_allowed_without_a_port_allows_only_the_default_port(
    strict: Target, http: httpx.AsyncClient, run_id: str, sink: WebhookSink
) -> None:
    body = {"user_id": f"{run_id}-port", "event": "port.rule", "payload": {}}
    other_port = await http.post(f"{strict.urls[0]}/notifications",
                                 json={**body, "webhook_url": f"http://127.0.0.1:{sink.port}/ok/x"})
    assert other_port.status_code == 422 and other_port.json()["error"]["code"] == "webhook_host_not_allowed"
    default_port = await http.post(f"{strict.urls[0]}/notifications", json={**body, "webhook_url": "http://127.0.0.1/x"})
    assert default_port.status_code == 202, default_port.text


async def test_a_webhook_to_a_loopback_address_is_refused_at_send_time(
    strict: Target, http: httpx.AsyncClient, run_id: str, sink: WebhookSink
) -> None:
    user, tag = f"{run_id}-ssrf", secrets.token_hex(4)
    resp = await http.post(f"{strict.urls[0]}/notifications", json={
        "user_id": user, "event": "ssrf.check", "payload": {}, "webhook_url": f"http://localhost:{sink.port}/ok/{tag}",
    })
    assert resp.status_code == 202, resp.text  # allowed by name: the address is checked when sending
    entries: list[dict[str, object]] = []

    async def dead_lettered() -> bool:
        got = await http.get(f"{strict.urls[0]}/dlq", params={"user_id": user})
        entries[:] = got.json()["entries"]
        return bool(entries)

    assert await until(dead_lettered, 20), "the refused webhook never reached the DLQ"
    (entry,) = entries
    assert entry["channel"] == "webhook" and entry["reason"] == "rejected", entry
    assert "loopback" in str(entry["last_error"]), entry
    assert sink.calls("ok", tag) == [], "the downstream on a loopback address was called"


async def test_webhook_calls_are_signed_with_the_configured_secret(
    target: Target, http: httpx.AsyncClient, run_id: str, sink: WebhookSink
) -> None:
    target.require_control("the suite's sink must share the cluster's webhook secret")
    tag = secrets.token_hex(4)
    resp = await http.post(f"{target.urls[0]}/notifications", json={
        "user_id": f"{run_id}-signed", "event": "signed.check", "payload": {"n": 1}, "webhook_url": sink.url("ok", tag),
    })
    assert resp.status_code == 202, resp.text
    assert await until(lambda: bool(sink.calls("ok", tag)), 20), "the webhook was never called"
    assert all(c.signature_ok for c in sink.calls("ok", tag)), "a call did not verify with standardwebhooks"
