"""The load generator's HTTP client (lean_http.py) against a server whose every byte the test chooses: what it
reads of an answer, that it reuses its connection and reconnects when the server closed it, and that every
way of getting no answer is an HttpError (counted by the benchmark, never mistaken for a status)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from lean_http import HttpError, LeanClient

pytestmark = pytest.mark.timeout(30)

Answer = Callable[[bytes], bytes | None]  # request -> reply bytes (None: close without answering)


class Server:
    def __init__(self) -> None:
        self.answer: Answer = lambda _: b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.startswith(b"content-length"))
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.answer(request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield srv


async def test_an_answer_is_read_and_the_connection_reused(server: Server) -> None:
    reply = b'HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\ncontent-length: 9\r\n\r\n{"id":1}\n'
    server.answer = lambda _: reply
    client = LeanClient(5)
    url = f"http://127.0.0.1:{server.port}/notifications"
    try:
        for _ in range(3):
            resp = await client.post(url, b'{"a":1}', {"content-type": "application/json"})
            assert (resp.status_code, resp.headers["content-type"], resp.content) == (
                202, "application/json", b'{"id":1}\n'
            )
    finally:
        await client.aclose()
    assert server.connections == 1
    assert server.requests[0] == (
        b"POST /notifications HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-length: 7\r\n"
        b"content-type: application/json\r\n\r\n{\"a\":1}" % server.port
    )


async def test_a_closed_connection_is_an_error_once_and_the_next_request_reconnects(server: Server) -> None:
    answers = iter([None, b"HTTP/1.1 429 Too Many\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n"])
    server.answer = lambda _: next(answers)
    client = LeanClient(5)
    url = f"http://127.0.0.1:{server.port}/n"
    try:
        with pytest.raises(HttpError):
            await client.post(url, b"x", {})
        resp = await client.post(url, b"x", {})
    finally:
        await client.aclose()
    assert (resp.status_code, resp.headers["retry-after"], resp.content) == (429, "1", b"")
    assert server.connections == 2


async def test_connection_close_in_the_answer_is_honoured(server: Server) -> None:
    server.answer = lambda _: b"HTTP/1.1 503 Unavailable\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx"
    client = LeanClient(5)
    url = f"http://127.0.0.1:{server.port}/n"
    try:
        assert [(await client.post(url, b"", {})).status_code for _ in range(2)] == [503, 503]
    finally:
        await client.aclose()
    assert server.connections == 2


CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"


@pytest.mark.parametrize(("reply", "kind"), [(CHUNKED, "no_content_length"), (b"garbage\r\n\r\n", "bad_status_line")])
async def test_an_answer_it_cannot_read_is_an_error(server: Server, reply: bytes, kind: str) -> None:
    server.answer = lambda _: reply
    client = LeanClient(5)
    try:
        with pytest.raises(HttpError) as error:
            await client.post(f"http://127.0.0.1:{server.port}/n", b"", {})
        assert error.value.kind == kind
    finally:
        await client.aclose()


async def test_no_answer_within_the_timeout_is_an_error(server: Server) -> None:
    server.answer = lambda _: b""  # reads the request, never answers
    client = LeanClient(0.3)
    try:
        with pytest.raises(HttpError) as error:
            await client.post(f"http://127.0.0.1:{server.port}/n", b"", {})
        assert error.value.kind == "TimeoutError"
    finally:
        await client.aclose()


async def test_a_refused_connection_is_an_error() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    client = LeanClient(5)
    with pytest.raises(HttpError) as error:
        await client.post(f"http://127.0.0.1:{port}/n", b"", {})
    assert error.value.kind == "ConnectionRefusedError"
