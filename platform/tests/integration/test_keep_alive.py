"""HTTP keep-alive: a gateway keeps an idle connection open longer than HTTP clients keep one in their pools
(httpx: 5 s, Node's agent: 4 s), so that no client sends a request on a connection the gateway is closing.

With uvicorn's default of 5 s, a client whose pool also expires connections after 5 s raced the gateway: the
request went out as the gateway closed, and the client saw a read error on a request that was never read
(the conformance self-test behind its fault proxy failed so, once in a full run).
"""

from __future__ import annotations

import asyncio

import pytest
from integration_support import Gateways

pytestmark = pytest.mark.timeout(60)

#: Longer than uvicorn's default keep-alive (5 s) and than the pools of common clients.
IDLE_S = 6.5


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> bytes:
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 10)
    return head.split(b"\r\n", 1)[0]


async def test_an_idle_connection_outlives_the_pools_of_common_http_clients(gateways: Gateways) -> None:
    gateway = await gateways.start()
    port = gateway.settings.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await _get(reader, writer, port)).split(b" ")[1] == b"200"
        # Waits for what must not happen: the gateway closing the idle connection (EOF) within IDLE_S.
        with pytest.raises(TimeoutError):
            early = await asyncio.wait_for(reader.read(1), IDLE_S)
            pytest.fail(f"the gateway closed the idle connection (read {early!r})")
        assert (await _get(reader, writer, port)).split(b" ")[1] == b"200"
    finally:
        writer.close()
