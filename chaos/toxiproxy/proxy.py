"""Proxies: a listening socket, an upstream address, the open connections and the toxics they apply.

A disabled proxy does not listen (new connections are refused) and has closed every connection it had. Toxic
changes reach the connections that are already open, as in Toxiproxy.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from .link import Connection, Link
from .toxics import STREAMS, ToxicSpec


class ApiError(Exception):
    """An error the HTTP API answers with its status and ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


PROXY_NOT_FOUND = (404, "proxy not found")
PROXY_EXISTS = (409, "proxy already exists")
TOXIC_NOT_FOUND = (404, "toxic not found")
TOXIC_EXISTS = (409, "toxic already exists")


def split_host_port(address: str) -> tuple[str, int]:
    """``"127.0.0.1:80"``, ``"localhost:80"``, ``"[::1]:80"`` or ``":80"`` (all interfaces) to (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ApiError(400, f"bad request body: address {address!r} is not host:port")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve(address: str) -> str:
    """The address a listen string binds to, as Toxiproxy reports it (``localhost:0`` -> ``127.0.0.1:0``)."""
    host, port = split_host_port(address)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise ApiError(400, f"bad request body: cannot resolve {address!r}: {exc}") from exc
    return join_host_port(str(info[4][0]), int(info[4][1]))


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str) -> None:
        self.name = name
        self.listen = resolve(listen)
        split_host_port(upstream)
        self.upstream = upstream
        self.enabled = False
        self.toxics: dict[str, list[ToxicSpec]] = {stream: [] for stream in STREAMS}
        self.lock = asyncio.Lock()  # one API change at a time per proxy
        self._server: asyncio.Server | None = None
        self._connections: dict[Connection, asyncio.Task[None]] = {}  # each with the accept task that runs it
        self._connecting: set[asyncio.Task[None]] = set()  # accept tasks still dialling the upstream

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [spec.to_json() for spec in self.toxic_list()],
        }

    def toxic_list(self) -> list[ToxicSpec]:
        return [spec for stream in STREAMS for spec in self.toxics[stream]]

    def find_toxic(self, name: str) -> ToxicSpec:
        for spec in self.toxic_list():
            if spec.name == name:
                return spec
        raise ApiError(*TOXIC_NOT_FOUND)

    # Listening ---------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.enabled:
            return
        host, port = split_host_port(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ApiError(500, f"listen tcp {self.listen}: {exc.strerror or exc}") from exc
        self._server = await asyncio.start_server(self._accept, sock=sock)
        bound = sock.getsockname()
        self.listen = join_host_port(host, int(bound[1]))
        self.enabled = True

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        self.enabled = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in self._connecting:
            task.cancel()
        connections, self._connections = self._connections, {}
        await asyncio.gather(*(conn.close() for conn in connections))
        # The accept tasks end on their own once their connection closed; wait so none outlives the proxy.
        await asyncio.gather(*connections.values(), *self._connecting, return_exceptions=True)

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        listen = resolve(listen)
        split_host_port(upstream)
        if listen != self.listen or upstream != self.upstream:
            await self.stop()
            self.listen, self.upstream = listen, upstream
        if enabled and not self.enabled:
            await self.start()
        elif not enabled and self.enabled:
            await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        host, port = split_host_port(self.upstream)
        self._connecting.add(task)
        try:
            upstream = await asyncio.open_connection(host, port)
        except (OSError, asyncio.CancelledError):
            # Unreachable upstream: Toxiproxy closes the client. Cancelled: the proxy stopped meanwhile, and
            # this task is ours alone (nothing awaits it but stop()), so it ends quietly.
            writer.close()
            return
        finally:
            self._connecting.discard(task)
        if not self.enabled:  # disabled while we were connecting
            writer.close()
            upstream[1].close()
            return
        conn = Connection((reader, writer), upstream, self.toxics)
        self._connections[conn] = task
        conn.start()
        await conn.done.wait()
        await conn.close()
        self._connections.pop(conn, None)  # only now: stop() waits for every task still in there

    # Toxics ------------------------------------------------------------------------------------------------------

    def _links(self, stream: str) -> list[Link]:
        return [conn.links[stream] for conn in list(self._connections)]

    async def add_toxic(self, spec: ToxicSpec) -> None:
        if any(existing.name == spec.name for existing in self.toxic_list()):
            raise ApiError(*TOXIC_EXISTS)
        self.toxics[spec.stream].append(spec)
        for link in self._links(spec.stream):
            link.add_toxic(spec)

    async def update_toxic(self, spec: ToxicSpec) -> None:
        for link in self._links(spec.stream):
            await link.update_toxic(spec)

    async def remove_toxic(self, name: str) -> None:
        spec = self.find_toxic(name)
        self.toxics[spec.stream].remove(spec)
        await asyncio.gather(*(link.remove_toxic(spec) for link in self._links(spec.stream)))

    async def reset(self) -> None:
        """Enable and remove every toxic (``POST /reset``)."""
        for spec in self.toxic_list():
            await self.remove_toxic(spec.name)
        await self.start()
