"""Collapse keys on the client side: the application gets the newest notification of each key, and is told which
earlier one it replaces (docs/clients.md "Collapse keys").

The gateway replaces a user's older unacknowledged notification when a newer one with the same ``collapse_key``
arrives, and never lists or pushes the older one again once the newer one is committed. A client can still meet an
older one after a newer one: one pushed just before the replacement, or held in the client's buffer when the newer
one arrived. So the client keeps, per key, the highest seq it has received, and drops (and acknowledges: harmless,
the server has replaced it or it was acknowledged) anything of that key with a lower seq, when it arrives and again
when the application would take it. Each notification handed over with a key names, in ``replaces``, the id of
the one of that key handed over before, if any: the application shows the newer one in its place.

Memory is bounded: the keys of the last ``window`` keyed notifications (an LRU), like the tracker's ids.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class Collapser:
    """Per collapse key, the newest seq received and the id last handed to the application. No I/O."""

    def __init__(self, window: int = 10_000) -> None:
        self.window = window
        self._newest: OrderedDict[str, int] = OrderedDict()
        self._taken: OrderedDict[str, str] = OrderedDict()

    def stale(self, item: Any) -> bool:
        """True when a newer notification of ``item``'s key was received: drop ``item`` (and acknowledge it)."""
        key = item.get("collapse_key")
        return key is not None and self._newest.get(key, -1) > item["seq"]

    def received(self, item: Any) -> None:
        """Note a notification handed to the buffer (after ``stale`` said no)."""
        key = item.get("collapse_key")
        if key is not None:
            _put(self._newest, key, max(self._newest.get(key, -1), item["seq"]), self.window)

    def taking(self, item: Any) -> None:
        """The application takes ``item``: sets ``replaces`` to the id of the last one of its key it took."""
        key = item.get("collapse_key")
        if key is None:
            return
        before = self._taken.get(key)
        if before is not None and before != item["id"]:
            item["replaces"] = before
        _put(self._taken, key, item["id"], self.window)


def _put(lru: OrderedDict[str, Any], key: str, value: Any, window: int) -> None:
    lru[key] = value
    lru.move_to_end(key)
    while len(lru) > window:
        lru.popitem(last=False)
