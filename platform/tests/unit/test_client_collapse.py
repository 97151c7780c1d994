"""The client's collapse-key bookkeeping (client/collapse.py): newest per key, stale ones dropped, ``replaces``;
and a NotiflowClient driven through its public API against a fake gateway on loopback (a WebSocket server and an
httpx mock transport for the offline queue and ack endpoints)."""

from __future__ import annotations

import contextlib
import uuid
from types import TracebackType
from typing import Any, Self

import httpx
import orjson
import pytest
from helpers import wait_for
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from notiflow.client import NotiflowClient
from notiflow.client.collapse import Collapser


def _n(nid: str, seq: int, key: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": nid, "seq": seq}
    if key is not None:
        item["collapse_key"] = key
    return item


def test_an_older_one_of_a_key_is_stale_once_a_newer_one_was_received() -> None:
    c = Collapser()
    newer, older = _n("b", 5, "k"), _n("a", 3, "k")
    assert not c.stale(newer)
    c.received(newer)
    assert c.stale(older)
    assert not c.stale(_n("c", 4, "other")) and not c.stale(_n("d", 1))
    assert not c.stale(newer)  # the newest itself is never stale
    c.received(older)  # an out-of-order receive never lowers the newest
    assert c.stale(_n("e", 4, "k"))


def test_taking_names_the_one_it_replaces() -> None:
    c = Collapser()
    first, second, plain = _n("a", 1, "k"), _n("b", 2, "k"), _n("p", 3)
    for item in (first, second, plain):
        c.received(item)
        c.taking(item)
    assert "replaces" not in first and second["replaces"] == "a" and "replaces" not in plain
    again = _n("b", 2, "k")
    c.taking(again)  # the same one handed over again (a reconnect) replaces nothing
    assert "replaces" not in again


def test_memory_is_bounded_by_the_window() -> None:
    c = Collapser(window=2)
    for i in range(5):
        item = _n(str(i), i + 1, f"k{i}")
        c.received(item)
        c.taking(item)
    assert not c.stale(_n("x", 0, "k0"))  # forgotten: the oldest keys left the window
    assert c.stale(_n("y", 0, "k4"))


class FakeGateway:
    """One user's gateway on loopback, as the client sees it: a WebSocket server that answers pings with a pong
    and ack frames with ``acked`` (when they carry a ref), and pushes notification frames on demand; and ``http``,
    an httpx client whose transport serves the offline queue (``queue``, minus what was acknowledged) and the ack
    endpoint. ``acked``: every id acknowledged, by socket frame or HTTP, in arrival order."""

    def __init__(self, queue: list[dict[str, Any]]) -> None:
        self.queue = queue
        self.acked: list[str] = []
        self.sockets: list[ServerConnection] = []
        self.closes: list[int | None] = []  # the close code each socket's client sent
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self._answer))
        self.url = ""
        self._server: Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await serve(self._socket, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        await self.http.aclose()

    async def push(self, *rows: dict[str, Any]) -> None:
        """Sends ``rows`` as notification frames on the newest socket, in this order."""
        for row in rows:
            await self.sockets[-1].send(orjson.dumps({"type": "notification", **row}).decode())

    async def _socket(self, ws: ServerConnection) -> None:
        self.sockets.append(ws)
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame["type"] == "ping":
                    await ws.send('{"type":"pong"}')
                elif frame["type"] == "ack":
                    self.acked.extend(frame["ids"])
                    if "ref" in frame:
                        await ws.send(orjson.dumps({"type": "acked", "ref": frame["ref"]}).decode())
        self.closes.append(ws.close_code)

    async def _answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.startswith("/notifications/offline/"):
            after, limit = int(request.url.params["after_seq"]), int(request.url.params["limit"])
            rows = [r for r in self.queue if r["seq"] > after and r["id"] not in self.acked][:limit]
            user = path.rsplit("/", 1)[1]
            nxt = rows[-1]["seq"] if len(rows) == limit else None
            return httpx.Response(200, json={"user_id": user, "notifications": rows, "next_after_seq": nxt})
        if request.method == "POST" and path.endswith("/ack"):
            ids = orjson.loads(request.content).get("ids", [])
            self.acked.extend(ids)
            return httpx.Response(200, json={"acknowledged": len(ids)})
        return httpx.Response(404, json={"detail": "not found"})


_NAMES: dict[str, str] = {}


def _row(name: str, seq: int, key: str | None = None) -> dict[str, Any]:
    """A notification as the offline queue lists it (and a frame carries it), with a uuid standing for ``name``."""
    nid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"notiflow-test:{name}"))
    _NAMES[nid] = name
    row: dict[str, Any] = {"id": nid, "seq": seq, "event": f"test.{name}"}
    if key is not None:
        row["collapse_key"] = key
    return {**row, "payload": {"name": name}, "created_at": "2026-12-07T12:00:00.000000+00:00"}


def _names(ids: list[str]) -> list[str]:
    return [_NAMES.get(nid, nid) for nid in ids]


@pytest.mark.timeout(10)
async def test_the_client_skips_a_buffered_one_whose_newer_one_came_and_acknowledges_it() -> None:
    async with FakeGateway([_row("a", 1, "k"), _row("p", 2), _row("b", 3, "k")]) as gateway:
        async with NotiflowClient(gateway.url, "u", http=gateway.http) as client:  # one page: a, p, b
            taken = [(await anext(client))["id"] for _ in range(2)]
            assert _names(taken) == ["p", "b"]  # a: a newer one of its key was in the buffer
            await wait_for(lambda: len(gateway.acked) >= 2, timeout_s=5, message="a and p acknowledged")
            assert _names(gateway.acked) == ["a", "p"]  # p: taken, then the consumer came back for b
        assert set(_names(gateway.acked)) == {"a", "p", "b"}  # b: the block was left without an exception


@pytest.mark.timeout(10)
async def test_the_client_drops_an_older_one_arriving_after_the_newer_one() -> None:
    async with FakeGateway([]) as gateway, NotiflowClient(gateway.url, "u", http=gateway.http) as client:
        await client.connected.wait()  # the (empty) queue was read: frames from now on are live
        await gateway.push(_row("b", 3, "k"), _row("a", 1, "k"), _row("p", 2))
        taken = [(await anext(client))["id"] for _ in range(2)]
        assert _names(taken) == ["b", "p"]  # a: older than b, which was received
        await wait_for(lambda: len(gateway.acked) >= 2, timeout_s=5, message="a and b acknowledged")
        assert sorted(_names(gateway.acked)) == ["a", "b"]  # a on arrival, b once the consumer came back: any order


@pytest.mark.timeout(10)
async def test_a_client_leaving_its_block_closes_its_socket_normally() -> None:
    """Before: leaving the block cancelled the socket's task inside its ``async with``, which closes with 1011
    (internal error): every client's exit was logged by the gateway as an error."""
    async with FakeGateway([_row("a", 1)]) as gateway:
        async with NotiflowClient(gateway.url, "u", http=gateway.http) as client:
            assert _names([(await anext(client))["id"]]) == ["a"]
        await wait_for(lambda: gateway.closes, timeout_s=5, message="the socket closed")
        assert gateway.closes == [1000]
        assert _names(gateway.acked) == ["a"]  # the last one taken is acknowledged on the way out
