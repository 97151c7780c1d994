"""Toxics: one class per Toxiproxy toxic type, each run as a stage in one direction's chain of a connection.

Each ``pipe`` puts what it holds on its output when it is cancelled (see stream.py), so removing or updating a toxic
releases its data rather than dropping it; only ``timeout``, ``reset_peer`` and ``limit_data`` drop bytes, by design.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .stream import Chunk, Stub


class Toxic:
    """A toxic's behaviour and attributes (integers, as in Toxiproxy; units in the attribute names' docs)."""

    type_name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, int]] = {}
    attributes: dict[str, int]

    def __init__(self, attributes: dict[str, int] | None = None) -> None:
        self.attributes = {**self.defaults, **(attributes or {})}

    def __getitem__(self, key: str) -> int:
        return self.attributes[key]

    async def pipe(self, stub: Stub) -> None:
        while True:
            item = await stub.recv()
            if item is None:
                stub.close()
                return
            stub.send(item)

    def cleanup(self, stub: Stub) -> None:
        """Called when the toxic is removed from a live connection, after its stage stopped."""


NOOP = Toxic()


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class Latency(Toxic):
    """Delays every chunk by ``latency`` ms +/- ``jitter`` ms, measured from when the proxy read it."""

    type_name = "latency"
    defaults: ClassVar[dict[str, int]] = {"latency": 0, "jitter": 0}

    def delay_s(self) -> float:
        delay_ms = self["latency"]
        if self["jitter"] > 0:
            delay_ms += random.randint(-self["jitter"], self["jitter"])
        return delay_ms / 1000

    async def pipe(self, stub: Stub) -> None:
        while True:
            item = await stub.recv()
            if item is None:
                stub.close()
                return
            try:
                wait_s = self.delay_s() - (_loop_time() - item.received_s)
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                item.received_s = _loop_time()
            finally:
                stub.send(item)  # also when interrupted: removing the toxic releases the chunk at once


class Bandwidth(Toxic):
    """Passes at most ``rate`` KB/s (1 KB = 1000 bytes); chunks bigger than 100 ms worth go out in 100 ms slices."""

    type_name = "bandwidth"
    defaults: ClassVar[dict[str, int]] = {"rate": 0}

    async def pipe(self, stub: Stub) -> None:
        rate = self["rate"]  # bytes per millisecond
        debt_s = 0.0  # time the data so far should have taken and has not yet been slept
        while True:
            item = await stub.recv()
            if item is None:
                stub.close()
                return
            if rate <= 0:
                stub.send(item)
                continue
            pending = item.data
            step = rate * 100
            debt_s += len(pending) / (rate * 1000)
            try:
                while len(pending) > step:
                    await asyncio.sleep(0.1)
                    stub.send(Chunk(pending[:step], item.received_s))
                    pending = pending[step:]
                    debt_s -= 0.1
                started = _loop_time()
                if debt_s > 0:
                    await asyncio.sleep(debt_s)
                debt_s -= _loop_time() - started  # sleep overshoot is paid back on the next chunk
            finally:
                if pending:
                    stub.send(Chunk(pending, item.received_s))


class SlowClose(Toxic):
    """Holds the end of the stream (the close) for ``delay`` ms; data passes untouched."""

    type_name = "slow_close"
    defaults: ClassVar[dict[str, int]] = {"delay": 0}

    async def pipe(self, stub: Stub) -> None:
        while True:
            item = await stub.recv()
            if item is not None:
                stub.send(item)
                continue
            try:
                await asyncio.sleep(self["delay"] / 1000)
            finally:
                stub.close()  # an interrupted delay closes now rather than never
            return


class Timeout(Toxic):
    """Lets no data through (drops it) and closes the connection after ``timeout`` ms; 0 never closes.

    Removing it closes the connection, as in Toxiproxy: the bytes it dropped are gone, the stream is broken.
    """

    type_name = "timeout"
    defaults: ClassVar[dict[str, int]] = {"timeout": 0}

    async def pipe(self, stub: Stub) -> None:
        limit_s = self["timeout"] / 1000 if self["timeout"] > 0 else None
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    item = await stub.recv()
                    if item is None:
                        break
                    stub.drop(item)
        except TimeoutError:
            pass
        stub.close()

    def cleanup(self, stub: Stub) -> None:
        stub.close()


class ResetPeer(Toxic):
    """On the first data (or EOF), waits ``timeout`` ms and resets the connection (RST, SO_LINGER 0)."""

    type_name = "reset_peer"
    defaults: ClassVar[dict[str, int]] = {"timeout": 0}

    async def pipe(self, stub: Stub) -> None:
        item = await stub.recv()
        try:
            await asyncio.sleep(self["timeout"] / 1000)
        except asyncio.CancelledError:
            if item is None:
                stub.close()
            else:
                stub.send(item)  # removed before it fired: the held chunk goes on
            raise
        if item is not None:
            stub.drop(item)
        stub.hooks.mark_reset()
        stub.close()


class Slicer(Toxic):
    """Cuts chunks into slices of ``average_size`` +/- ``size_variation`` bytes, ``delay`` µs apart."""

    type_name = "slicer"
    defaults: ClassVar[dict[str, int]] = {"average_size": 0, "size_variation": 0, "delay": 0}

    def bounds(self, start: int, end: int) -> list[int]:
        """Slice end offsets for data[start:end], splitting about in half until slices are small enough."""
        ends: list[int] = []
        self._cut(start, end, max(self["average_size"], 1), max(self["size_variation"], 0), ends)
        return ends

    def _cut(self, start: int, end: int, average: int, variation: int, ends: list[int]) -> None:
        if end - start - average <= variation:
            ends.append(end)
            return
        mid = start + (end - start) // 2
        if variation > 0:
            mid = min(max(mid + random.randint(-variation, variation - 1), start + 1), end - 1)
        self._cut(start, mid, average, variation, ends)
        self._cut(mid, end, average, variation, ends)

    async def pipe(self, stub: Stub) -> None:
        delay_s = self["delay"] / 1_000_000
        while True:
            item = await stub.recv()
            if item is None:
                stub.close()
                return
            data, sent = item.data, 0
            try:
                for end in self.bounds(0, len(data)):
                    stub.send(Chunk(data[sent:end], item.received_s))
                    sent = end
                    if delay_s > 0 and sent < len(data):
                        await asyncio.sleep(delay_s)
            finally:
                if sent < len(data):
                    stub.send(Chunk(data[sent:], item.received_s))


class LimitData(Toxic):
    """Closes the connection once ``bytes`` bytes have gone through in this direction."""

    type_name = "limit_data"
    defaults: ClassVar[dict[str, int]] = {"bytes": 0}

    async def pipe(self, stub: Stub) -> None:
        state = stub.state  # kept across updates of the toxic, as in Toxiproxy
        state.setdefault("sent", 0)
        while True:
            item = await stub.recv()
            if item is None:
                break
            remaining = max(self["bytes"] - state["sent"], 0)
            if len(item.data) > remaining:
                stub.hooks.release(len(item.data) - remaining)
                item = Chunk(item.data[:remaining], item.received_s)
            if item.data:
                stub.send(item)
                state["sent"] += len(item.data)
            if self["bytes"] - state["sent"] <= 0:
                break
        stub.close()


TOXIC_TYPES: dict[str, type[Toxic]] = {
    cls.type_name: cls for cls in (Latency, Bandwidth, SlowClose, Timeout, ResetPeer, Slicer, LimitData)
}
STREAMS = ("upstream", "downstream")


class BadAttributes(ValueError):
    """An attribute that is not an integer (the API answers 400)."""


def parse_attributes(toxic_type: str, raw: Any, base: dict[str, int] | None = None) -> dict[str, int]:
    """Merge ``raw`` (a JSON object) onto ``base``; unknown keys are ignored, as Toxiproxy's JSON decoding does."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadAttributes("attributes must be an object")
    known = TOXIC_TYPES[toxic_type].defaults
    merged = dict(base if base is not None else known)
    for key, value in raw.items():
        if key not in known:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise BadAttributes(f"attribute {key} must be an integer, got {value!r}")
        if value < 0:
            raise BadAttributes(f"attribute {key} must not be negative, got {value!r}")
        merged[key] = int(value)
    return merged


@dataclass
class ToxicSpec:
    """A toxic as the API shows it: what every connection of the proxy applies in one direction."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int] = field(default_factory=dict)

    def instantiate(self) -> Toxic:
        """The toxic one connection runs: like Toxiproxy, ``toxicity`` is drawn per connection (and per update)."""
        if random.random() < self.toxicity:
            return TOXIC_TYPES[self.type](self.attributes)
        return NOOP

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }
