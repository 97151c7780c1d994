"""The stand-ins a socket's protocol uses for ``asyncio.Event`` and ``asyncio.Queue`` (gateway/transport.py:
``_Flag``, ``_Inbox``): they behave as uvicorn needs, and they offer every method uvicorn's protocol calls
on them, so that a uvicorn release that calls another fails here rather than on a live socket."""

from __future__ import annotations

import asyncio
import inspect
import re

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from notiflow.gateway import transport
from notiflow.gateway.transport import _Flag, _Inbox

pytestmark = pytest.mark.timeout(30)


async def _settle() -> None:
    """Lets every ready callback run (each wake-up is a callback or two away)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize(("attribute", "stand_in"), [("queue", _Inbox), ("writable", _Flag)])
def test_every_method_uvicorn_calls_is_offered(attribute: str, stand_in: type) -> None:
    used = set(re.findall(rf"self\.{attribute}\.(\w+)", inspect.getsource(WebSocketsSansIOProtocol)))
    assert used, f"uvicorn's protocol no longer uses self.{attribute}: the stand-in may be stale"
    assert {name for name in used if not hasattr(stand_in, name)} == set()


def test_the_protocol_installs_both_stand_ins() -> None:
    source = inspect.getsource(transport.FrameProtocol.__init__)
    assert "self.queue = _Inbox()" in source and "self.writable = _Flag()" in source


async def test_a_flag_wakes_every_waiter_and_a_cancelled_one_does_not_block_the_rest() -> None:
    flag = _Flag()
    first, second, cancelled = (asyncio.create_task(flag.wait()) for _ in range(3))
    await _settle()
    assert not (first.done() or second.done())
    cancelled.cancel()
    await _settle()
    flag.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 5)  # set: returns at once


async def test_a_cleared_flag_blocks_until_set_again() -> None:
    flag = _Flag()
    flag.set()
    flag.clear()
    waiter = asyncio.create_task(flag.wait())
    await _settle()
    assert not waiter.done()
    flag.set()
    await asyncio.wait_for(waiter, 5)


async def test_an_inbox_hands_items_out_in_order_and_waits_when_empty() -> None:
    inbox = _Inbox()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert (inbox.qsize(), inbox.empty()) == (2, False)
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    assert inbox.empty()
    getter = asyncio.create_task(inbox.get())
    await _settle()
    assert not getter.done()
    inbox.put_nowait(3)
    assert await asyncio.wait_for(getter, 5) == 3


async def test_two_readers_of_an_inbox_each_get_one_item() -> None:
    inbox = _Inbox()
    readers = [asyncio.create_task(inbox.get()) for _ in range(2)]
    await _settle()
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    assert sorted(await asyncio.wait_for(asyncio.gather(*readers), 5)) == ["a", "b"]


async def test_a_cancelled_reader_loses_no_item() -> None:
    inbox = _Inbox()
    reader = asyncio.create_task(inbox.get())
    await _settle()
    reader.cancel()
    await _settle()
    inbox.put_nowait("kept")
    assert await asyncio.wait_for(inbox.get(), 5) == "kept"
