"""One proxied TCP connection: two links (upstream, downstream), each a reader, a chain of toxic stages, a writer.

Like Toxiproxy's ToxicLink: the chain starts with a head seat the reader writes through; toxics are appended at the
end and can be added, updated or removed while the connection is open. All queue puts are synchronous, so rewiring
the chain between two awaits cannot reorder or lose a chunk. When a link's writer ends (EOF reached it, or its
socket failed) it closes its destination socket; the other link's reader then sees EOF on that socket and the
connection unwinds through the other chain, as in Toxiproxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from .stream import Chunk, Queue, Stub
from .toxics import ToxicSpec

READ_BYTES = 32 * 1024
BUFFER_LIMIT_BYTES = 8 * 1024 * 1024  # bytes read but not yet written, per link, before the reader waits


class Link:
    """One direction of a connection."""

    def __init__(
        self,
        conn: Connection,
        direction: str,
        source: asyncio.StreamReader,
        dest: asyncio.StreamWriter,
        specs: list[ToxicSpec],
    ) -> None:
        self.conn = conn
        self.direction = direction
        self._source = source
        self.dest = dest
        self._sink: Queue = asyncio.Queue()  # what the writer sends, in order
        self._head = Stub("head", self, self._sink, self._sink)  # the reader writes through its output
        self._stubs: list[Stub] = []
        self._inflight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._specs = specs

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for spec in self._specs:
            self._append(spec)
        self._tasks = [
            loop.create_task(self._read(), name=f"read:{self.direction}"),
            loop.create_task(self._write(), name=f"write:{self.direction}"),
        ]

    # Toxic chain ---------------------------------------------------------------------------------------------------

    def _append(self, spec: ToxicSpec) -> None:
        last = self._stubs[-1] if self._stubs else self._head
        stub = Stub(spec.name, self, asyncio.Queue(), self._sink)
        last.output = stub.input
        self._stubs.append(stub)
        stub.start(spec.instantiate())

    def add_toxic(self, spec: ToxicSpec) -> None:
        self._append(spec)

    async def update_toxic(self, spec: ToxicSpec) -> None:
        for stub in self._stubs:
            if stub.name == spec.name:
                await stub.stop()
                if not stub.closed:
                    stub.start(spec.instantiate())

    async def remove_toxic(self, spec: ToxicSpec) -> None:
        index = next((i for i, stub in enumerate(self._stubs) if stub.name == spec.name), None)
        if index is None:
            return
        stub = self._stubs[index]
        await stub.stop()  # the toxic put what it held on its output
        index = self._stubs.index(stub)  # the chain may have grown while we waited
        if stub.toxic is not None:
            stub.toxic.cleanup(stub)
        if not stub.closed:
            while not stub.input.empty():  # what it had not read yet goes on, ahead of anything newer
                stub.output.put_nowait(stub.input.get_nowait())
        previous = self._stubs[index - 1] if index > 0 else self._head
        previous.output = stub.output
        del self._stubs[index]

    # Pumps ---------------------------------------------------------------------------------------------------------

    def release(self, nbytes: int) -> None:
        self._inflight -= nbytes
        if self._inflight <= BUFFER_LIMIT_BYTES:
            self._room.set()

    def mark_reset(self) -> None:
        self.conn.reset = True

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await self._source.read(READ_BYTES)
                if not data or self.dest.is_closing():
                    break
                if not self._stubs and self._sink.empty():
                    # No toxic to apply and nothing queued to overtake: skip the writer task (half the cost).
                    self.dest.write(data)
                    await self.dest.drain()
                    continue
                self._inflight += len(data)
                self._head.send(Chunk(data, loop.time()))
                if self._inflight > BUFFER_LIMIT_BYTES:
                    self._room.clear()
                    await self._room.wait()
        except OSError:
            pass  # a reset or failed socket ends the stream like EOF does
        finally:
            self._head.output.put_nowait(None)

    async def _write(self) -> None:
        try:
            while True:
                item = await self._sink.get()
                if item is None:
                    break
                self.dest.write(item.data)
                await self.dest.drain()
                self.release(len(item.data))
        except OSError:
            pass
        finally:
            self.conn.link_done(self)

    async def stop(self) -> None:
        for stub in self._stubs:
            await stub.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Connection:
    """A client socket and its upstream socket, joined by two links."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        toxics: dict[str, list[ToxicSpec]],
    ) -> None:
        self.client = client[1]
        self.upstream = upstream[1]
        self.reset = False
        self.done = asyncio.Event()
        self.links = {
            "upstream": Link(self, "upstream", client[0], upstream[1], list(toxics["upstream"])),
            "downstream": Link(self, "downstream", upstream[0], client[1], list(toxics["downstream"])),
        }
        self._finished: set[str] = set()

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def link_done(self, link: Link) -> None:
        if self.reset:
            for writer in (self.client, self.upstream):
                _abort_with_rst(writer)
        else:
            link.dest.close()
        self._finished.add(link.direction)
        if len(self._finished) == 2 or self.reset:
            self.done.set()

    async def close(self) -> None:
        """Drop the connection now (the proxy was disabled, changed or deleted): both sockets get a FIN."""
        for writer in (self.client, self.upstream):
            writer.close()
        for link in self.links.values():
            await link.stop()
        self.done.set()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
