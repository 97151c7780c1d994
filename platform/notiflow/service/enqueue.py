"""What an ingest commit hands to the stream: its notifications' stream entries, and, once they are all
there, its outbox row to delete (migration 015).

Each commit writes one outbox row naming its notifications. The gateway XADDs committed notifications in
slices of its own size (ENQUEUE_BATCH), which may split a commit or join several; a commit's row may go only
once every one of its notifications is on the stream. A slice whose XADD failed taints every commit it
touched: their rows stay, and the reconciler re-enqueues those commits whole after the grace period (the part
that did reach the stream comes twice: at-least-once, clients de-duplicate by id).
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass

from notiflow.models import Carried, Channel, NewNotification, StreamEntry

CARRY_PAYLOAD_MAX = 8 * 1024  # payload bytes (JSON) a socket stream entry carries; larger ones are loaded


def stream_entries(items: list[NewNotification], chunk: int) -> list[StreamEntry]:
    """Each notification's recipients in chunks: one entry per chunk and channel. A socket entry carries
    the frame (payloads up to CARRY_PAYLOAD_MAX), so that its first processing reads nothing from
    PostgreSQL; larger payloads are loaded by the worker rather than copied into Redis per chunk. A notification
    with a collapse key is never carried: a newer one may replace it before its entry is processed, and only
    its row says so (the worker loads it and skips a replaced delivery)."""
    out: list[StreamEntry] = []
    for item in items:
        if item.topic is not None:
            # One entry, whatever the topic's size: the worker expands it into deliveries (service/expansion.py).
            out.append(StreamEntry(item.id, (item.topic,), Channel.TOPIC))
            continue
        carry = (
            item.seqs is not None
            and item.created_at is not None
            and len(item.payload_json) <= CARRY_PAYLOAD_MAX
            and item.collapse_key is None
        )
        expires_ms = None
        if carry and item.ttl_seconds is not None and item.created_at is not None:
            expires_ms = int(item.created_at.timestamp() * 1000) + item.ttl_seconds * 1000
        for start in range(0, len(item.user_ids), chunk):
            users = tuple(item.user_ids[start : start + chunk])
            carried = None
            if carry and item.seqs is not None and item.created_at is not None:
                seqs = tuple(item.seqs[start : start + chunk])
                carried = Carried(seqs, item.event, item.payload_json, item.created_at, expires_ms)
            out.append(StreamEntry(item.id, users, Channel.SOCKET, carried))
            if item.webhook_url:
                out.append(StreamEntry(item.id, users, Channel.WEBHOOK))
    return out


@dataclass(slots=True)
class _Commit:
    outbox_id: uuid.UUID
    left: int  # notifications not yet handed to an XADD
    failed: bool = False


class OutboxLedger:
    """Commits in the order their notifications are queued for the stream; slices are taken in that order."""

    def __init__(self) -> None:
        self._commits: deque[_Commit] = deque()

    def __len__(self) -> int:
        return len(self._commits)

    def committed(self, outbox_id: uuid.UUID, count: int) -> None:
        """A commit of ``count`` notifications (queued for the stream in this order) wrote row ``outbox_id``."""
        if count <= 0:
            raise ValueError(f"a commit queues at least one notification, got {count}")
        self._commits.append(_Commit(outbox_id, count))

    def take(self, count: int) -> list[_Commit]:
        """The commits that the next ``count`` queued notifications belong to, in order."""
        touched: list[_Commit] = []
        while count > 0 and self._commits:
            commit = self._commits[0]
            step = min(count, commit.left)
            commit.left -= step
            count -= step
            touched.append(commit)
            if commit.left == 0:
                self._commits.popleft()
        if count > 0:
            raise ValueError(f"{count} notifications taken beyond the commits recorded")
        return touched

    @staticmethod
    def settled(touched: list[_Commit], *, ok: bool) -> list[uuid.UUID]:
        """The slice's XADD answered (``ok``) or failed: the outbox rows that may now be deleted."""
        if not ok:
            for commit in touched:
                commit.failed = True
            return []
        return [c.outbox_id for c in touched if c.left == 0 and not c.failed]
