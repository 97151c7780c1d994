"""How the gateway hands a fan-out to its sockets (gateway/hub.py): a Pub/Sub message's frames go to the sockets
of the users this node holds, every socket that got frames in a loop iteration is written by one callback,
once, with its frames in order, and the send meter takes each frame's own accept time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from notiflow import metrics
from notiflow.gateway.hub import Connection, Hub, sent
from notiflow.models import frame_template, notification_frame
from notiflow.streams.pubsub import encode_batch, route_frames

pytestmark = pytest.mark.timeout(10)
CREATED = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)


class Writer:
    """A FrameWriter that records each write (or fails it)."""

    def __init__(self, log: list[tuple[str, list[str]]], name: str, fail: bool = False) -> None:
        self.on_writable: Callable[[], None] | None = None
        self.on_text: Callable[[str], None] | None = None
        self._log, self._name, self._fail = log, name, fail

    @property
    def open(self) -> bool:
        return True

    @property
    def writable(self) -> bool:
        return True

    def write_texts(self, texts: list[str]) -> None:
        if self._fail:
            raise OSError("the transport broke")
        self._log.append((self._name, list(texts)))


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the callbacks scheduled with call_soon."""

    def __init__(self) -> None:
        super().__init__()
        self.soon = 0

    def call_soon(self, callback: Callable[..., Any], *args: Any, context: Any = None) -> asyncio.Handle:
        self.soon += 1
        return super().call_soon(callback, *args, context=context)


def test_route_frames_builds_frames_only_for_the_users_held_and_hands_back_what_they_map_to() -> None:
    a = frame_template(uuid.uuid4(), "a.b", '{"x": 1}', CREATED)
    b = frame_template(uuid.uuid4(), "c.d", '{"y": 2}', CREATED)
    message = encode_batch({a: [("u1", 5), ("u2", 9), ("u3", 1)], b: [("u2", 6)]})
    held = {"u2": "socket-of-u2", "u3": "socket-of-u3"}
    assert list(route_frames(message, held)) == [
        ("socket-of-u2", a.frame(9)), ("socket-of-u3", a.frame(1)), ("socket-of-u2", b.frame(6)),
    ]
    assert list(route_frames('u3\t{"type":"notification"}', held)) == [("socket-of-u3", '{"type":"notification"}')]
    assert list(route_frames(message, {})) == []


def test_one_callback_writes_every_socket_of_an_iteration_once_with_its_frames_in_order() -> None:
    loop = CountingLoop()
    try:
        loop.run_until_complete(_fan_out(loop))
    finally:
        loop.close()


async def _fan_out(loop: CountingLoop) -> None:
    written: list[tuple[str, list[str]]] = []
    hub = Hub()
    for user in ("u1", "u2", "u3"):
        hub.add(Connection(user, 100, lambda code: None, Writer(written, user, fail=user == "u2")))
    a = frame_template(uuid.uuid4(), "a.b", '{"x": 1}', CREATED)
    b = frame_template(uuid.uuid4(), "c.d", '{"y": 2}', CREATED)
    soon0 = loop.soon
    hub.deliver(encode_batch({a: [("u1", 1), ("u2", 1), ("u3", 1), ("gone", 4)], b: [("u1", 2), ("u3", 2)]}))
    assert hub.frames_pushed == 5
    assert written == [], "written before the iteration's callbacks ran"
    await asyncio.sleep(0)
    # u2's transport failed: its write is its own, u1's and u3's still went out, each in one write.
    assert written == [("u1", [a.frame(1), b.frame(2)]), ("u3", [a.frame(1), b.frame(2)])]
    assert loop.soon - soon0 <= 3  # the writes' one callback, the meter's and the sleep's: not one per socket
    hub.deliver(encode_batch({b: [("u3", 3)]}))  # the next iteration's frames are written in the next one
    await asyncio.sleep(0)
    assert written[2:] == [("u3", [b.frame(3)])]


async def test_the_meter_takes_each_frames_own_accept_time_when_notifications_alternate() -> None:
    def value(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name) or 0.0

    later, whole = CREATED.replace(second=9), CREATED.replace(microsecond=0)  # whole: no fraction in its text
    first, second = (notification_frame(uuid.uuid4(), 1, "e", "{}", at) for at in (CREATED, later))
    third = notification_frame(uuid.uuid4(), 2, "e", "{}", whole)
    frames0 = value("notiflow_ws_frames_sent_total")
    sum0 = value("notiflow_delivery_latency_seconds_sum")
    before = time.time()
    sent([first, second, '{"type":"pong"}', first, third])
    sent([third, second])
    after = time.time()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done
    assert value("notiflow_ws_frames_sent_total") - frames0 == 6
    accepted = 2 * CREATED.timestamp() + 2 * later.timestamp() + 2 * whole.timestamp()
    observed = value("notiflow_delivery_latency_seconds_sum") - sum0
    assert 6 * before - accepted - 1e-3 <= observed <= 6 * after - accepted + 1e-3
