"""Toxiproxy 2.x's HTTP API on a minimal HTTP/1.1 server over asyncio streams.

HTTP/1.1 keep-alive (and HTTP/1.0 close), Content-Length request bodies, JSON in and out. Routes, status codes,
error bodies (``{"error": message, "status": code}``) and JSON shapes follow Toxiproxy's api.go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from .collection import ProxyCollection
from .proxy import ApiError

log = logging.getLogger("chaos.toxiproxy")

VERSION = "2.12.0"  # the Toxiproxy API version this server follows
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024

Response = tuple[int, Any]  # status and a JSON-able body (None: no body)
Handler = Callable[[ProxyCollection, dict[str, str], Any], Awaitable[Response]]
_ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = []


def route(pattern: str, *methods: str) -> Callable[[Handler], Handler]:
    regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

    def register(handler: Handler) -> Handler:
        for known, table in _ROUTES:
            if known.pattern == regex.pattern:
                table.update(dict.fromkeys(methods, handler))
                return handler
        _ROUTES.append((regex, dict.fromkeys(methods, handler)))
        return handler

    return register


@route("/proxies", "GET")
async def proxy_index(c: ProxyCollection, _: dict[str, str], __: Any) -> Response:
    return 200, {name: proxy.to_json() for name, proxy in c.proxies.items()}


@route("/proxies", "POST")
async def proxy_create(c: ProxyCollection, _: dict[str, str], body: Any) -> Response:
    return 201, (await c.create(body)).to_json()


@route("/populate", "POST")
async def populate(c: ProxyCollection, _: dict[str, str], body: Any) -> Response:
    proxies, error = await c.populate(body)
    answer: dict[str, Any] = {"proxies": [proxy.to_json() for proxy in proxies]}
    if error is None:
        return 201, answer
    return error.status, {"error": error.message, "status": error.status, **answer}


@route("/proxies/{proxy}", "GET")
async def proxy_show(c: ProxyCollection, args: dict[str, str], _: Any) -> Response:
    return 200, c.get(args["proxy"]).to_json()


@route("/proxies/{proxy}", "POST", "PATCH")
async def proxy_update(c: ProxyCollection, args: dict[str, str], body: Any) -> Response:
    return 200, (await c.update(args["proxy"], body)).to_json()


@route("/proxies/{proxy}", "DELETE")
async def proxy_delete(c: ProxyCollection, args: dict[str, str], _: Any) -> Response:
    await c.delete(args["proxy"])
    return 204, None


@route("/proxies/{proxy}/toxics", "GET")
async def toxic_index(c: ProxyCollection, args: dict[str, str], _: Any) -> Response:
    return 200, [spec.to_json() for spec in c.get(args["proxy"]).toxic_list()]


@route("/proxies/{proxy}/toxics", "POST")
async def toxic_create(c: ProxyCollection, args: dict[str, str], body: Any) -> Response:
    return 200, (await c.add_toxic(args["proxy"], body)).to_json()


@route("/proxies/{proxy}/toxics/{toxic}", "GET")
async def toxic_show(c: ProxyCollection, args: dict[str, str], _: Any) -> Response:
    return 200, c.get(args["proxy"]).find_toxic(args["toxic"]).to_json()


@route("/proxies/{proxy}/toxics/{toxic}", "POST", "PATCH")
async def toxic_update(c: ProxyCollection, args: dict[str, str], body: Any) -> Response:
    return 200, (await c.update_toxic(args["proxy"], args["toxic"], body)).to_json()


@route("/proxies/{proxy}/toxics/{toxic}", "DELETE")
async def toxic_delete(c: ProxyCollection, args: dict[str, str], _: Any) -> Response:
    await c.remove_toxic(args["proxy"], args["toxic"])
    return 204, None


@route("/reset", "POST")
async def reset(c: ProxyCollection, _: dict[str, str], __: Any) -> Response:
    await c.reset()
    return 204, None


@route("/version", "GET")
async def version(_: ProxyCollection, __: dict[str, str], ___: Any) -> Response:
    return 200, {"version": VERSION}


async def dispatch(collection: ProxyCollection, method: str, target: str, raw_body: bytes) -> Response:
    path = target.split("?", 1)[0]
    for regex, table in _ROUTES:
        match = regex.match(path)
        if match is None:
            continue
        handler = table.get(method)
        if handler is None:
            raise ApiError(405, "method not allowed")
        args = {key: unquote(value) for key, value in match.groupdict().items()}
        body: Any = None
        if raw_body.strip():
            try:
                body = json.loads(raw_body)
            except ValueError as exc:
                raise ApiError(400, f"bad request body: {exc}") from exc
        elif method in ("POST", "PATCH") and handler is not reset:
            raise ApiError(400, "bad request body: EOF")
        return await handler(collection, args, {} if body is None else body)
    raise ApiError(404, "not found")


class ApiServer:
    """Serves the API of one ProxyCollection on an asyncio stream server."""

    def __init__(self, collection: ProxyCollection) -> None:
        self.collection = collection
        self._clients: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    async def close(self) -> None:
        """Close every API connection and wait for its handler (idle keep-alive ones included)."""
        clients, self._clients = self._clients, {}
        for writer in clients:
            writer.close()
        await asyncio.gather(*clients.values(), return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[writer] = task
        try:
            while await self._one_request(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._clients.pop(writer, None)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _respond(writer, 400, {"error": "malformed request line", "status": 400}, keep_alive=False)
            return False
        method, target, protocol = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if protocol == "HTTP/1.1" else connection == "keep-alive"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await _respond(writer, 411, {"error": "send a Content-Length body", "status": 411}, keep_alive=False)
            return False
        length_text = headers.get("content-length", "0") or "0"
        length = int(length_text) if length_text.isdigit() else -1
        if not 0 <= length <= MAX_BODY_BYTES:
            await _respond(writer, 413, {"error": "bad or too large Content-Length", "status": 413}, keep_alive=False)
            return False
        raw_body = await reader.readexactly(length) if length else b""
        try:
            status, body = await dispatch(self.collection, method.upper(), target, raw_body)
        except ApiError as exc:
            status, body = exc.status, {"error": exc.message, "status": exc.status}
        except Exception as exc:  # a bug here: answer 500 as Toxiproxy does, keep serving the other requests
            log.exception("%s %s failed", method, target)
            status, body = 500, {"error": f"{type(exc).__name__}: {exc}", "status": 500}
        if method != "GET":  # what changed and when: the log a chaos run keeps beside its report
            log.info("%s %s -> %d", method, target, status)
        await _respond(writer, status, body, keep_alive=keep_alive)
        return keep_alive


async def _respond(writer: asyncio.StreamWriter, status: int, body: Any, *, keep_alive: bool) -> None:
    payload = b"" if body is None or status == 204 else json.dumps(body).encode() + b"\n"
    reason = HTTPStatus(status).phrase
    head = [f"HTTP/1.1 {status} {reason}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    if status != 204:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
    await writer.drain()


class ToxiproxyServer:
    """The whole server: the API on host:port and the proxies it manages. ``async with`` starts and stops it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8474) -> None:
        self.host, self.port = host, port
        self.proxies = ProxyCollection()
        self._api = ApiServer(self.proxies)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._api.handle, self.host, self.port, limit=MAX_HEADER_BYTES)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, drop every proxy's connections, close the API's connections."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await self.proxies.close()
        await self._api.close()

    async def __aenter__(self) -> ToxiproxyServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
