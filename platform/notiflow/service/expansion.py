"""Expanding a topic notification into its subscribers' deliveries, after its 202 (docs/contract.md "Topics").

Ingest stores a topic notification once (its row, its send row with a cutoff on ``topic_clock``, one stream entry
of channel TOPIC). The stream worker that reads the entry calls ``expand``: page after page of the subscribers at
acceptance, in user id order, each page one transaction that inserts the page's deliveries (seqs from the users'
counters, as ingest numbers them) and commits the expansion's progress with them; then the page goes on the stream
(fresh socket entries carrying their frames, split by partition) and the send notes that it is routed. A crash
anywhere resumes from the committed progress: a page committed but not known to be routed is routed again from
its rows (the worker skips what was handed off meanwhile); nothing is inserted twice, no seq is skipped.

A topic's sends are expanded in cutoff order: a send waits while an earlier one of its topic is unfinished, so each
subscriber's seqs follow the order in which the topic's notifications were accepted (I4 among them). A send whose
expansion keeps failing (its entry parked as poison) ends where its last committed page left it (``park``): it
would otherwise hold every later send of its topic, and the reconciler would put it back on the stream for ever.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from enum import Enum
from typing import Any

import orjson

from notiflow.errors import StoreUnavailable
from notiflow.lifecycle import pause
from notiflow.models import Carried, Channel, StreamEntry
from notiflow.roles import WorkerSettings
from notiflow.service.enqueue import CARRY_PAYLOAD_MAX
from notiflow.service.ports import Record, WorkLog
from notiflow.store import deliveries as deliveries_sql
from notiflow.store import topics as sql
from notiflow.store.pool import pg_errors

log = logging.getLogger(__name__)

#: A page to route: its users, their seqs (None: read from the rows), and the user id the page ends at.
Routed = tuple[list[str], list[int] | None, str | None]
#: How often a send waiting for an earlier send of its topic looks again, s.
WAIT_POLL_S = 0.05


class Step(Enum):
    MORE = "more"  # a page was expanded or routed: go on
    WAIT = "wait"  # an earlier send of the topic is unfinished
    DONE = "done"  # every subscriber has its delivery, on the stream


class Expander:
    """The expand use case. One per stream worker process."""

    def __init__(self, *, settings: WorkerSettings, pool: Record, work: WorkLog) -> None:
        self._s = settings
        self._pool = pool
        self._work = work
        self.pages = 0  # pages expanded by this process, for logs and tests
        self._in_flight: set[uuid.UUID] = set()  # sends with a page being routed by this process

    async def expand_held(self, notification_id: uuid.UUID, stop: asyncio.Event) -> bool:
        """``expand``, held in place through store outages (with backoff) until ``stop``; True once done."""
        delay_s = 0.1
        while True:
            try:
                await self.expand(notification_id)
                return True
            except StoreUnavailable as exc:
                if stop.is_set():
                    return False
                log.warning("topic expansion held by a store outage",
                            extra={"notification_id": str(notification_id), "error": str(exc)})
            await pause(stop, delay_s)
            delay_s = min(delay_s * 2, 5.0)

    async def park(self, entry_id: str, fields: dict[str, str], notification_id: uuid.UUID, reason: str) -> None:
        """End a send whose expansion keeps failing, in one transaction: its stream entry (``fields``) goes to
        the poison entries with ``reason``, and the send is finished with the recipients its committed pages
        reached (they keep their deliveries); subscribers past them get none. Later sends of the topic go on."""
        async with pg_errors("park topic send"), self._pool.acquire() as conn, conn.transaction():
            await deliveries_sql.record_poison(conn, [(entry_id, orjson.dumps(fields).decode(), reason[:2000])])
            await sql.finish(conn, notification_id)

    async def expand(self, notification_id: uuid.UUID) -> None:
        """Expand the send to the end (waiting for earlier sends of its topic). StoreUnavailable leaves it where
        its last committed page left it; calling again resumes there. A page's stream write overlaps the next
        page's statement: at most one page is being routed while another is inserted."""
        async with pg_errors("load topic notification"), self._pool.acquire() as conn:
            note = await sql.notification(conn, notification_id)
        routing: asyncio.Task[None] | None = None
        try:
            while True:
                step, page = await self.step(notification_id, note)  # meanwhile the previous page is routed
                if routing is not None:
                    await routing  # routed in page order: a mark never passes an earlier page's
                    routing = None
                if page is not None:
                    self._in_flight.add(notification_id)
                    routing = asyncio.create_task(self._route(notification_id, note, *page))
                elif step is Step.DONE:
                    return
                elif step is Step.WAIT:
                    await asyncio.sleep(WAIT_POLL_S)
        finally:
            if routing is not None:
                routing.cancel()
                self._in_flight.discard(notification_id)

    async def step(self, notification_id: uuid.UUID, note: dict[str, Any] | None) -> tuple[Step, Routed | None]:
        """One page: what is committed and not known to be routed (a crash, or a stream write that failed), else
        the next page, else finish. Returns what to route (the caller routes it, then marks it routed)."""
        async with pg_errors("expand topic"), self._pool.acquire() as conn, conn.transaction():
            send = await sql.lock_send(conn, notification_id)
            if send is None or send.done:
                return Step.DONE, None
            if send.routed_after != send.expanded_after and not self._routing(notification_id):
                return Step.MORE, (await sql.unrouted(conn, send), None, send.expanded_after)
            if send.expanded or note is None:
                if self._routing(notification_id):
                    return Step.MORE, None  # the last page's stream write first
                # note is None: the notification is gone (dropped by retention): nothing to deliver.
                await sql.finish(conn, notification_id)
                return Step.DONE, None
            if await sql.earlier_open(conn, send.topic, send.cutoff):
                return Step.WAIT, None
            page = await sql.expand_page(conn, send, self._s.topic_page, webhook=bool(note["webhook_url"]),
                                         receipts=bool(note["status_url"]))
            self.pages += 1
            return Step.MORE, (page.users, page.seqs, page.last_user or send.expanded_after)

    def _routing(self, notification_id: uuid.UUID) -> bool:
        return notification_id in self._in_flight

    async def _route(
        self, nid: uuid.UUID, note: dict[str, Any] | None, users: list[str], seqs: list[int] | None, upto: str | None
    ) -> None:
        try:
            if note is not None and users:
                await self._work.add(self.entries(nid, note, users, seqs))
            async with pg_errors("route topic page"), self._pool.acquire() as conn:
                await sql.mark_routed(conn, nid, upto)
        finally:
            self._in_flight.discard(nid)

    def entries(
        self, nid: uuid.UUID, note: dict[str, Any], users: list[str], seqs: list[int] | None
    ) -> list[StreamEntry]:
        """The page's users by partition, in chunks; fresh socket entries carry their frames (``seqs`` given),
        re-routed ones are read from their rows by the worker."""
        # Not for a collapse key: the worker reads those rows, and skips one replaced meanwhile (as ingest's entries).
        carry = seqs is not None and len(note["payload"]) <= CARRY_PAYLOAD_MAX and note["collapse_key"] is None
        expires_ms = int(note["expires_at"].timestamp() * 1000) if note["expires_at"] is not None else None
        parts: dict[int, list[int]] = defaultdict(list)
        for i, u in enumerate(users):
            parts[self._work.partition_of(u)].append(i)
        chunk = self._s.fanout_chunk
        out: list[StreamEntry] = []
        for at in parts.values():
            for start in range(0, len(at), chunk):
                idx = at[start : start + chunk]
                page_users = tuple(users[i] for i in idx)
                carried = None
                if carry and seqs is not None:
                    carried = Carried(tuple(seqs[i] for i in idx), note["event"], note["payload"],
                                      note["created_at"], expires_ms)
                out.append(StreamEntry(nid, page_users, Channel.SOCKET, carried))
                if note["webhook_url"]:
                    out.append(StreamEntry(nid, page_users, Channel.WEBHOOK))
        return out
