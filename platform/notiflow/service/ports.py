"""The ports: what the services need of the stores, as small Protocols.

The services depend on these, never on an adapter's class: the Redis adapters (streams/) and the PostgreSQL
pool (store/pool.py) implement them, and so do the memory fakes of the unit tests (platform/tests/fakes.py)
and the fault-injecting wrappers of the integration tests (platform/tests/faults.py). ``Wrappers`` is how a
process is handed such a wrapper: the gateway's ``create_app`` and the worker factories apply it to the
adapters they build, so that a test injects a fault through what it passes in rather than by overwriting a
private attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from notiflow.frames import NodeBatch
from notiflow.models import StreamEntry
from notiflow.streams.pending import Pending

__all__ = ["Buckets", "HostBudget", "NodeBatch", "Pending", "Presence", "Record", "Routes", "WorkLog", "Wrappers"]

T = TypeVar("T")


class Record(Protocol):
    """PostgreSQL, the system of record: connections lent to store/'s SQL functions (asyncpg's Pool)."""

    def acquire(self, *, timeout: float | None = None) -> AbstractAsyncContextManager[Any]: ...


class WorkLog(Protocol):
    """The work stream with its consumer group, and the retry schedule (streams/work.py, streams/pending.py)."""

    #: The work partitions (NOTIFLOW_STREAM_PARTITIONS): each has its own stream, group and schedule.
    partitions: range

    def partition_of(self, user_id: str) -> int: ...
    async def check_partitions(self) -> None: ...
    async def add(self, entries: list[StreamEntry]) -> list[str]: ...
    async def backlog(self) -> int: ...
    async def ensure_group(self) -> None: ...
    async def read(
        self, consumer: str, count: int, block_ms: int, partition: int = 0
    ) -> list[tuple[str, dict[str, str]]]: ...
    async def ack(self, entry_ids: list[str], units: list[int] | None = None) -> None: ...
    async def idle(self, min_idle_ms: int, count: int) -> list[Pending]: ...
    async def claim(
        self, consumer: str, min_idle_ms: int, entry_ids: list[str]
    ) -> list[tuple[str, dict[str, str] | None]]: ...
    async def keep(self, consumer: str, entry_ids: list[str]) -> None: ...
    async def schedule(self, items: list[tuple[str, int]]) -> None: ...
    async def move_due(self, limit: int, now_ms: int | None = None) -> int: ...
    async def scheduled(self) -> int: ...
    async def claim_epochs(self) -> list[int]: ...
    async def figures(self) -> dict[str, int]: ...


class Presence(Protocol):
    """Which gateway nodes hold a live socket of each user (streams/presence.py)."""

    async def connect(self, node_id: str, user_id: str) -> int: ...
    async def disconnect(self, node_id: str, user_id: str) -> None: ...
    async def heartbeat(self, node_id: str, counts: dict[str, int]) -> bool: ...
    async def leave(self, node_id: str, user_ids: list[str]) -> None: ...
    async def live_nodes(self, user_ids: list[str]) -> dict[str, list[str]]: ...
    async def live_sockets(self, user_id: str) -> int: ...


class Routes(Protocol):
    """Frames to gateway nodes (streams/pubsub.py): per node, how many subscribers heard its publish."""

    async def publish(self, per_node: dict[str, NodeBatch]) -> dict[str, int]: ...


class Buckets(Protocol):
    """Token buckets of the ingest rate limit (streams/ratelimit.py): per request, the ms to wait (0: taken)."""

    async def take(self, requests: list[tuple[str, int]], rate_per_s: float, burst: int) -> list[int]: ...


class HostBudget(Protocol):
    """Webhook retries per downstream host and second (streams/budget.py): per host, how many are granted."""

    async def take(self, wanted: dict[str, int], per_second: int, now_s: float | None = None) -> dict[str, int]: ...


def _same(adapter: T) -> T:
    return adapter


@dataclass(frozen=True, kw_only=True)
class Wrappers:
    """Wrappers around the adapters a process builds, each given the real adapter and returning what the
    services get (the adapter itself by default). Production passes none; a test passes one that raises or
    blocks on demand (fault injection through an adapter passed in)."""

    record: Callable[[Record], Record] = _same
    work: Callable[[WorkLog], WorkLog] = _same
    presence: Callable[[Presence], Presence] = _same
    routes: Callable[[Routes], Routes] = _same
    buckets: Callable[[Buckets], Buckets] = _same
