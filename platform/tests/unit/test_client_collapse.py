"""The client's collapse-key bookkeeping (client/collapse.py): newest per key, stale ones dropped, ``replaces``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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


async def _client_taking(items: list[dict[str, Any]], count: int) -> tuple[list[str], list[str]]:
    """Hand ``items`` to a client as frames, then take ``count``: (ids taken, ids acknowledged meanwhile)."""
    client = NotiflowClient(["http://127.0.0.1:9"], "u")
    client._runner = asyncio.create_task(asyncio.Event().wait())  # as if connected: never ends
    try:
        for item in items:
            await client._emit(item)  # type: ignore[arg-type]
        taken = [(await client.__anext__())["id"] for _ in range(count)]
        return taken, list(client._acks)
    finally:
        client._runner.cancel()
        await client._http.aclose()


@pytest.mark.timeout(10)
async def test_the_client_skips_a_buffered_one_whose_newer_one_came_and_acknowledges_it() -> None:
    taken, acked = await _client_taking([_n("a", 1, "k"), _n("p", 2), _n("b", 3, "k")], 2)
    assert taken == ["p", "b"] and acked == ["a", "p"]  # p: taken, then the consumer came back for b


@pytest.mark.timeout(10)
async def test_the_client_drops_an_older_one_arriving_after_the_newer_one() -> None:
    taken, acked = await _client_taking([_n("b", 3, "k"), _n("a", 1, "k"), _n("p", 2)], 2)
    assert taken == ["b", "p"] and acked == ["a", "b"]
