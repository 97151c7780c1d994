"""Notification ids, made on ingest's hot path: random (version 4) UUIDs without ``uuid4``'s per-id syscall.

``uuid.uuid4()`` makes one ``os.urandom`` call per id: 3.8-6.1 % of a gateway process in an ingest blast
(py-spy). Here the randomness comes from one ``os.urandom`` call per ``CHUNK`` ids, the version and variant
bits are set on the integer, and the id is built by the public constructor, ``uuid.UUID(int=...)``.
"""

from __future__ import annotations

import os
import uuid

CHUNK = 256  # ids per os.urandom call

# Version 4 and the RFC 4122 variant, set as UUID(..., version=4) sets them.
_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_SET = (0x8000 << 48) | (4 << 76)


class IdSource:
    """Random version 4 UUIDs, ``CHUNK`` at a time from the OS's generator. One per process (not thread-safe)."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self) -> uuid.UUID:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(16 * CHUNK), 0
        self._at = at + 16
        return uuid.UUID(int=(int.from_bytes(self._pool[at : at + 16], "big") & _CLEAR) | _SET)

    def forget(self) -> None:
        """Drop the pooled randomness (a forked child must not hand out its parent's next ids)."""
        self._pool, self._at = b"", 0


_SOURCE = IdSource()
os.register_at_fork(after_in_child=_SOURCE.forget)


def new_id() -> uuid.UUID:
    """A fresh random notification id (this process's source)."""
    return _SOURCE.new()
