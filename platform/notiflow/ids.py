"""Notification ids, made on ingest's hot path: time-ordered (version 7) UUIDs without a syscall per id.

An id's first 48 bits are the Unix time in milliseconds when it was made; the rest is random, with the
version (7) and the RFC 9562 variant bits set. The id therefore names its creation time: the record is
partitioned by ranges of ids, one range per UTC day (store/partitions.py), and a lookup by id reaches
one partition. Ids made before the upgrade to migration 009 are random version 4 ids; they live in the
legacy partitions (``era`` 0) until those expire.

``uuid.uuid4()`` makes one ``os.urandom`` call per id: 3.8-6.1 % of a gateway process in an ingest blast
(py-spy). Here the randomness comes from one ``os.urandom`` call per ``CHUNK`` ids, and the id is built
by the public constructor, ``uuid.UUID(int=...)``.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

CHUNK = 256  # ids per os.urandom call

_RANDOM_BITS = (1 << 80) - 1  # below the 48-bit timestamp
# Version 7 and the RFC 9562 variant, set on the 80 bits below the timestamp.
_CLEAR = ~((0xC000 << 48) | (0xF000 << 64)) & _RANDOM_BITS
_SET = (0x8000 << 48) | (7 << 76)


class IdSource:
    """Version 7 UUIDs, randomness ``CHUNK`` ids at a time from the OS. One per process (not thread-safe)."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self, ms: int | None = None) -> uuid.UUID:
        """A fresh id made now (or at Unix time ``ms``, milliseconds)."""
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(16 * CHUNK), 0
        self._at = at + 16
        if ms is None:
            ms = time.time_ns() // 1_000_000
        rand = (int.from_bytes(self._pool[at : at + 16], "big") & _CLEAR) | _SET
        return uuid.UUID(int=(ms << 80) | rand)

    def forget(self) -> None:
        """Drop the pooled randomness (a forked child must not hand out its parent's next ids)."""
        self._pool, self._at = b"", 0


_SOURCE = IdSource()
os.register_at_fork(after_in_child=_SOURCE.forget)


def new_id() -> uuid.UUID:
    """A fresh time-ordered notification id (this process's source)."""
    return _SOURCE.new()


def id_at(when: datetime) -> uuid.UUID:
    """A fresh id whose timestamp is ``when`` (tests and benchmarks that write history)."""
    return _SOURCE.new(int(when.timestamp() * 1000))


def lowest_id(when: datetime) -> uuid.UUID:
    """The smallest version 7 id made at ``when`` or later: a partition bound."""
    return uuid.UUID(int=int(when.timestamp() * 1000) << 80)


def made_at(nid: uuid.UUID) -> datetime | None:
    """When a version 7 id was made; None for an id of another version (a legacy random id)."""
    if nid.version != 7:
        return None
    return datetime.fromtimestamp((nid.int >> 80) / 1000, tz=UTC)
