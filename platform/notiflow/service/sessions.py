"""Sessions of one gateway node: presence of its sockets, its Pub/Sub feed, and resynchronisation.

The node's liveness key is refreshed every third of the presence TTL. A node killed with SIGKILL stops
refreshing it and its users count as offline within ``presence_ttl_s`` (SPEC I7).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from notiflow.errors import StoreUnavailable
from notiflow.frames import Handed, notification_frame
from notiflow.lifecycle import Deadline, cancel
from notiflow.models import DeliveryStatus
from notiflow.roles import GatewaySettings
from notiflow.service.dispatch_log import DispatchLog
from notiflow.service.ports import Presence
from notiflow.service.queries import QueryService
from notiflow.streams.client import Redis
from notiflow.streams.pubsub import NodeListener

log = logging.getLogger(__name__)

_DISPATCHED = DeliveryStatus.DISPATCHED.value
_OFFLINE = DeliveryStatus.OFFLINE.value

RESYNC_USERS_PER_QUERY = 500
#: Open notifications read per user and query: a resync pages through all of them, this many at a time.
RESYNC_PAGE_PER_USER = 200


class LocalSockets(Protocol):
    """What the service needs of the transport's socket registry."""

    def counts(self) -> dict[str, int]: ...
    def users(self) -> list[str]: ...
    def push(self, user_id: str, frame: str) -> None: ...
    def deliver(self, message: str) -> Handed: ...


class SessionService:
    def __init__(
        self, *, settings: GatewaySettings, redis: Redis, channel: str, presence: Presence, queries: QueryService,
        sockets: LocalSockets, handoffs: DispatchLog,
    ) -> None:
        """``channel``: the Pub/Sub channel of this node's frames (streams/pubsub.py Router.channel);
        ``handoffs``: where the frames this node got are recorded (``dispatched``, or ``offline`` for a user it
        no longer holds) unless their acknowledgement comes first (the socket acks settle them)."""
        self._s = settings
        self.node_id = settings.node_id
        self._presence = presence
        self._queries = queries
        self._sockets = sockets
        self._handoffs = handoffs
        self._listener = NodeListener(redis, channel, self._deliver, self.resync)
        self._tasks: list[asyncio.Task[None]] = []
        self.resyncs = 0

    def _deliver(self, message: str) -> None:
        handed = self._sockets.deliver(message)
        self._handoffs.add(handed.pushed, _DISPATCHED)
        self._handoffs.add(handed.missed, _OFFLINE)

    async def start(self) -> None:
        await self._presence.heartbeat(self.node_id, {})
        self._handoffs.start()
        self._tasks = [
            asyncio.create_task(self._listener.run(), name="pubsub"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        # Sockets may register only once frames can reach them.
        await asyncio.wait_for(self._listener.subscribed.wait(), timeout=10)

    async def close(self, grace_s: float) -> None:
        """Stop the feed and the heartbeat (cancelled: they get RELEASE_S to let go of their connections),
        write the hand-offs held, then leave presence, all within ``grace_s``. A task that absorbs its
        cancellation (a Redis client may, inside a read) is left behind rather than waited for; a leave that
        does not finish in time is given up, and the entries expire with the node key."""
        deadline = Deadline(grace_s)
        await cancel(self._tasks)
        await self._handoffs.close(deadline.left() / 2)  # no frame comes any more: what is held is written
        try:
            await asyncio.wait_for(self._presence.leave(self.node_id, self._sockets.users()), deadline.left())
        except (StoreUnavailable, TimeoutError) as exc:
            reason = str(exc) or "timeout"
            log.warning("presence leave failed; entries expire with the node key", extra={"error": reason})

    async def opened(self, user_id: str) -> int:
        """Count a new socket of ``user_id``; returns how many the user now holds across live nodes."""
        return await self._presence.connect(self.node_id, user_id)

    async def presence(self, user_id: str) -> int:
        """How many sockets (and SSE streams) ``user_id`` holds across live gateway nodes, by the same
        presence routing reads: a node dead for ``presence_ttl_s`` counts no more (SPEC I7)."""
        return await self._presence.live_sockets(user_id)

    async def closed(self, user_id: str) -> None:
        try:
            await self._presence.disconnect(self.node_id, user_id)
        except StoreUnavailable as exc:
            # The count stays one too high until the next re-assertion; at worst a notification is
            # published here, finds no socket, and waits in the offline queue as it would anyway.
            log.warning("presence disconnect failed", extra={"user_id": user_id, "error": str(exc)})

    async def _heartbeat(self) -> None:
        period_s = self._s.presence_ttl_s / 3
        while True:
            try:
                if await self._presence.heartbeat(self.node_id, self._sockets.counts()):
                    log.warning("node key had expired: presence re-asserted", extra={"node_id": self.node_id})
                    await self.resync()
            except StoreUnavailable as exc:
                log.warning("heartbeat failed", extra={"error": str(exc)})
            await asyncio.sleep(period_s)

    async def resync(self) -> None:
        """Push every open notification of this node's users again: Pub/Sub messages published while
        the subscription (or presence) was gone were lost. Clients de-duplicate by id.

        Every open one, not only those past the highest seq a socket got: a retry or a re-dispatch
        publishes an older seq again, and that frame may be the one the gap lost. Each user's open
        notifications are read in pages (keyset by seq), for up to RESYNC_USERS_PER_QUERY users per query,
        and pushed before the next page is read: memory holds one page per user of one group. A socket
        that cannot take them all is closed as a slow consumer, and its client reads the offline queue."""
        self.resyncs += 1
        users = self._sockets.users()
        for i in range(0, len(users), RESYNC_USERS_PER_QUERY):
            cursors = dict.fromkeys(users[i : i + RESYNC_USERS_PER_QUERY], 0)
            while cursors:
                try:
                    rows = await self._queries.open_for_users(cursors, RESYNC_PAGE_PER_USER)
                except StoreUnavailable as exc:
                    log.warning("resync failed; clients can read their offline queue", extra={"error": str(exc)})
                    return
                cursors = self._push_page(rows)

    def _push_page(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Push one page of rows (ordered by user, then seq); the cursors of the users whose page was full.
        The pushes are hand-offs like the feed's: a frame the gap lost was counted as heard by the PUBLISH, so
        no worker records it, and only this push makes it ``dispatched`` (unless acknowledged first)."""
        taken: dict[str, int] = {}
        for r in rows:
            frame = notification_frame(
                r["id"], r["seq"], r["event"], r["payload"], r["created_at"], r.get("collapse_key")
            )
            self._sockets.push(r["user_id"], frame)
            taken[r["user_id"]] = taken.get(r["user_id"], 0) + 1
        self._handoffs.add([(r["user_id"], str(r["id"])) for r in rows], _DISPATCHED)
        full = {u for u, n in taken.items() if n >= RESYNC_PAGE_PER_USER}
        return {r["user_id"]: r["seq"] for r in rows if r["user_id"] in full}
