"""What an ingest commit hands to the stream: its notifications' stream entries. No I/O here.

The gateway XADDs whole commits (service/ingest.py), then deletes their outbox rows (migration 015); a commit
whose XADD failed keeps its row, and the reconciler re-enqueues it whole after the grace period.
"""

from __future__ import annotations

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
