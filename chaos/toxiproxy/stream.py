"""The stream between toxics: chunks, the queues that carry them, and the seat (stub) one toxic runs in.

A stage reads chunks from its input queue and puts what it lets through on its output queue; ``None`` is the end of
the stream. Interrupting a stage (its toxic is updated or removed) cancels its task: every toxic puts the data it
holds on its output before it returns, so removing a toxic never drops bytes (as in Toxiproxy's ToxicStub).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Chunk:
    data: bytes
    received_s: float  # loop time at which the proxy read (or a toxic last released) these bytes


Item = Chunk | None  # None ends the stream
Queue = asyncio.Queue[Item]


class LinkHooks(Protocol):
    def release(self, nbytes: int) -> None:
        """Bytes a toxic dropped: they no longer count towards the link's buffer bound."""

    def mark_reset(self) -> None:
        """Close the connection with a TCP RST (SO_LINGER 0) instead of a FIN."""


class Pipe(Protocol):
    async def pipe(self, stub: Stub) -> None:
        """Move chunks from ``stub.input`` to ``stub.output`` until EOF, a close, or cancellation."""

    def cleanup(self, stub: Stub) -> None:
        """Called when the toxic is removed from a live connection, after its stage stopped."""


class Stub:
    """One toxic's seat in a link: where it reads, where it writes, and its per-connection state."""

    def __init__(self, name: str, hooks: LinkHooks, input_q: Queue, output_q: Queue) -> None:
        self.name = name
        self.hooks = hooks
        self.input = input_q
        self.output = output_q  # rewired by the link when a later toxic is added or removed
        self.closed = False
        self.state: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None
        self.toxic: Pipe | None = None  # what runs in this seat for this connection

    async def recv(self) -> Item:
        return await self.input.get()

    def send(self, chunk: Chunk) -> None:
        if not self.closed:
            self.output.put_nowait(chunk)

    def drop(self, chunk: Chunk) -> None:
        self.hooks.release(len(chunk.data))

    def close(self) -> None:
        """End the stream here: what follows in the chain sees EOF, the link's writer closes its socket."""
        if not self.closed:
            self.closed = True
            self.output.put_nowait(None)

    def start(self, toxic: Pipe) -> None:
        self.toxic = toxic
        self.task = asyncio.get_running_loop().create_task(self.toxic.pipe(self), name=f"toxic:{self.name}")

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.task = None
