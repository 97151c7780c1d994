"""Bundles: many fresh socket entries in one stream entry.

Unicast traffic made one stream entry per notification, and each entry cost its XADD's arguments, Redis's
per-entry work, the worker's parse of eight fields and its XACK/XDEL id: about a quarter of the stream
worker's time in a unicast blast (py-spy). A bundle packs the carried socket entries of one enqueue batch,
up to ``BUNDLE_MAX_DELIVERIES`` recipients, into one entry whose field ``b`` holds one line per entry:

    id \\t user ids (USER_SEP) \\t seqs (",") \\t event \\t created_at (ISO) \\t expires ms or "" \\t payload

The payload is last (it is compact JSON: it holds no raw newline, and a tab in it stays in the last field).
A bundle is only ever fresh work: the worker acknowledges it once every line is settled, and a reclaimed
bundle is unpacked into single entries (worker/reclaim.py), so that a crash counts towards the poison
bound of one notification, not of its neighbours.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from notiflow.models import EVENT_RE, USER_SEP, Carried, Channel, StreamEntry, user_id_problem

#: Recipients one bundle names at most. Past about a hundred, the per-entry costs are a rounding error,
#: while a reclaim unpacks (and a poison bound applies to) what one entry holds.
BUNDLE_MAX_DELIVERIES = 100
BUNDLE = "b"


def _line(e: StreamEntry, times: dict[datetime, str]) -> str:
    """One entry's line; ``times`` keeps the created_at texts written so far (one commit's entries share one)."""
    c = e.carried
    assert c is not None, "only carried entries are bundled"
    expires = "" if c.expires_at_ms is None else str(c.expires_at_ms)
    created = times.get(c.created_at)
    if created is None:
        created = times[c.created_at] = c.created_at.isoformat()
    return "\t".join((
        str(e.notification_id), USER_SEP.join(e.user_ids), ",".join(map(str, c.seqs)), c.event,
        created, expires, c.payload_json,
    ))


def pack(entries: list[StreamEntry]) -> list[dict[str, str]]:
    """Each entry's stream fields, consecutive carried socket entries bundled (in order; a bundle of one
    is written as the entry itself)."""
    out: list[dict[str, str]] = []
    group: list[StreamEntry] = []
    held = 0
    times: dict[datetime, str] = {}
    for e in [*entries, None]:
        small = e is not None and e.carried is not None and e.channel is Channel.SOCKET
        if e is None or not small or held + len(e.user_ids) > BUNDLE_MAX_DELIVERIES:
            if len(group) == 1:
                out.append(group[0].fields())
            elif group:
                out.append({"c": Channel.SOCKET.value, BUNDLE: "\n".join([_line(g, times) for g in group])})
            group, held = [], 0
        if e is None:
            break
        if small and len(e.user_ids) < BUNDLE_MAX_DELIVERIES:
            group.append(e)
            held += len(e.user_ids)
        else:
            out.append(e.fields())
    return out


def _parse_line(line: str, times: dict[str, datetime], events: set[str]) -> StreamEntry:
    """One line; ``times`` and ``events`` remember what earlier lines of the bundle parsed or checked (the
    lines of one commit share their created_at, and mostly their event)."""
    parts = line.split("\t", 6)
    if len(parts) != 7:
        raise ValueError(f"bundle line has {len(parts)} fields, not 7: {line!r:.200}")
    nid, users_text, seqs_text, event, created, expires, payload = parts
    users = tuple(users_text.split(USER_SEP)) if users_text else ()
    if not users or any(user_id_problem(u) for u in users):
        raise ValueError(f"bad recipients in bundle line: {users_text!r:.200}")
    seqs = tuple(int(x) for x in seqs_text.split(","))
    if len(seqs) != len(users):
        raise ValueError("bundle line's seqs do not match its recipients")
    if event not in events:
        if not EVENT_RE.match(event):
            raise ValueError(f"bad event in bundle line: {event!r:.200}")
        events.add(event)
    at = times.get(created)
    if at is None:
        at = times[created] = datetime.fromisoformat(created)
    carried = Carried(seqs, event, payload, at, int(expires) if expires else None)
    return StreamEntry(uuid.UUID(nid), users, Channel.SOCKET, carried)


def is_bundle(fields: dict[Any, Any]) -> bool:
    return BUNDLE in fields or BUNDLE.encode() in fields


def units(fields: dict[Any, Any]) -> int:
    """What an entry counts towards the backlog: a bundle its lines (parsable or not), anything else one."""
    raw = fields.get(BUNDLE, fields.get(BUNDLE.encode()))
    if raw is None:
        return 1
    return (raw.count(b"\n") if isinstance(raw, bytes | bytearray) else str(raw).count("\n")) + 1


def parse(fields: dict[Any, Any]) -> list[StreamEntry]:
    """The entries a stream entry names: a bundle's lines, or the entry itself. Raises ValueError or KeyError
    (a poison entry) when any part is malformed: a bundle is taken whole or not at all."""
    raw = fields.get(BUNDLE, fields.get(BUNDLE.encode()))
    if raw is None:
        return [StreamEntry.parse(fields)]
    text = raw.decode() if isinstance(raw, bytes | bytearray) else str(raw)
    if not text:
        raise ValueError("empty bundle")
    times: dict[str, datetime] = {}
    events: set[str] = set()
    return [_parse_line(line, times, events) for line in text.split("\n")]
