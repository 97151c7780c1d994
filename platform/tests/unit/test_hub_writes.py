"""How the gateway hands a fan-out to its sockets (gateway/hub.py): a Pub/Sub message's frames go to the sockets
of the users this node holds, each socket sends what it got in order (frames that arrive while a send waits go
in the next one, within the socket's bound), and the send meter takes each frame's own accept time."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest
from helpers import wait_for

from notiflow import metrics
from notiflow.frames import encode_batch, frame_id, frame_template, notification_frame, route_frames
from notiflow.gateway.hub import Connection, Hub, sent
from notiflow.gateway.protocol import CloseCode

pytestmark = pytest.mark.timeout(10)
CREATED = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)


class Sends:
    """Stands in for a socket's ASGI sends (gateway/ws.py's ``_send``): records each call's frames; a failing one
    reports the socket gone, and one that is held waits until released."""

    def __init__(self, log: list[tuple[str, list[str]]], name: str, fail: bool = False) -> None:
        self._log, self._name, self._fail = log, name, fail
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, frames: list[str]) -> bool:
        if self._fail:
            return False
        await self.release.wait()
        self._log.append((self._name, list(frames)))
        return True


def test_route_frames_builds_frames_only_for_the_users_held_and_hands_back_what_they_map_to() -> None:
    a = frame_template(uuid.uuid4(), "a.b", '{"x": 1}', CREATED)
    b = frame_template(uuid.uuid4(), "c.d", '{"y": 2}', CREATED)
    message = encode_batch({a: [("u1", 5), ("u2", 9), ("u3", 1)], b: [("u2", 6)]})
    held = {"u2": "socket-of-u2", "u3": "socket-of-u3"}
    missed: list[tuple[str, str]] = []
    ida, idb = frame_id(a.head), frame_id(b.head)
    assert list(route_frames(message, held, missed)) == [
        ("socket-of-u2", a.frame(9), ("u2", ida)), ("socket-of-u3", a.frame(1), ("u3", ida)),
        ("socket-of-u2", b.frame(6), ("u2", idb)),
    ]
    assert missed == [("u1", ida)]
    whole = a.frame(3)
    assert list(route_frames(f"u3\t{whole}\nu9\t{whole}", held, missed)) == [("socket-of-u3", whole, ("u3", ida))]
    assert missed == [("u1", ida), ("u9", ida)]
    assert list(route_frames('u3\t{"type":"acked","ref":1}', held)) == [
        ("socket-of-u3", '{"type":"acked","ref":1}', None)
    ]
    assert list(route_frames(message, {})) == []


def test_a_frames_id_is_the_notifications_id_as_text() -> None:
    nid = uuid.uuid4()
    assert frame_id(frame_template(nid, "a.b", "{}", CREATED).frame(4)) == str(nid)
    assert frame_id('{"type":"acked","ref":1}') is None


async def test_each_socket_sends_its_frames_in_order_and_a_gone_one_no_more() -> None:
    written: list[tuple[str, list[str]]] = []
    hub = Hub()
    for user in ("u1", "u2", "u3"):
        hub.add(Connection(user, 100, lambda code: None, Sends(written, user, fail=user == "u2")))
    a = frame_template(uuid.uuid4(), "a.b", '{"x": 1}', CREATED)
    b = frame_template(uuid.uuid4(), "c.d", '{"y": 2}', CREATED)
    handed = hub.deliver(
        encode_batch({a: [("u1", 1), ("u2", 1), ("u3", 1), ("gone", 4)], b: [("u1", 2), ("u3", 2)]})
    )
    assert hub.frames_pushed == 5
    ida, idb = frame_id(a.head), frame_id(b.head)
    assert handed.pushed == [("u1", ida), ("u2", ida), ("u3", ida), ("u1", idb), ("u3", idb)]
    assert handed.missed == [("gone", ida)]
    assert written == [], "sent before the sending tasks ran"
    await wait_for(lambda: len(written) == 2, timeout_s=5, message=f"sent: {written}")
    # u2's socket is gone: its send is its own, u1's and u3's frames went out, each socket's in one call, in order.
    assert sorted(written) == [("u1", [a.frame(1), b.frame(2)]), ("u3", [a.frame(1), b.frame(2)])]
    hub.deliver(encode_batch({b: [("u2", 3), ("u3", 3)]}))
    await wait_for(lambda: len(written) == 3, timeout_s=5, message=f"sent: {written}")
    assert written[2:] == [("u3", [b.frame(3)])]
    await wait_for(lambda: not asyncio.all_tasks() - {asyncio.current_task()}, timeout_s=5,
                   message="a socket kept its sending task")


async def test_frames_pushed_while_a_send_waits_go_next_in_order_and_count_towards_the_bound() -> None:
    written: list[tuple[str, list[str]]] = []
    closed: list[CloseCode] = []
    sends = Sends(written, "u1")
    conn = Connection("u1", 3, closed.append, sends)
    sends.release.clear()  # the transport is over its high-water mark: the send waits
    conn.push("f1")
    await wait_for(lambda: conn.buffered == 0, timeout_s=5, message="the first frame was not taken")
    for frame in ("f2", "f3", "f4"):
        conn.push(frame)
    assert conn.buffered == 3 and closed == []
    conn.push("f5")  # over the bound of 3 waiting frames: the socket is closed, nothing more is buffered
    assert closed == [CloseCode.SLOW_CONSUMER] and conn.buffered == 3
    sends.release.set()
    await wait_for(lambda: len(written) == 2, timeout_s=5, message=f"sent: {written}")
    assert written == [("u1", ["f1"]), ("u1", ["f2", "f3", "f4"])]


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


async def test_a_socket_stopped_while_its_send_waits_sends_nothing_more_and_keeps_no_task() -> None:
    written: list[tuple[str, list[str]]] = []
    sends = Sends(written, "u1")
    conn = Connection("u1", 10, lambda code: None, sends)
    sends.release.clear()
    conn.push("f1")
    await wait_for(lambda: conn.buffered == 0, timeout_s=5, message="the first frame was not taken")
    conn.push("f2")
    conn.stop()  # the socket is gone while its send waits for the transport
    await wait_for(lambda: not asyncio.all_tasks() - {asyncio.current_task()}, timeout_s=5,
                   message="the waiting send's task is still there")
    sends.release.set()
    conn.push("f3")
    await asyncio.sleep(0)  # one iteration: a flush would run now
    assert written == [] and conn.buffered == 2
