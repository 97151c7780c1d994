"""Delivery receipts in a history (docs/contract.md §4a): every delivery of a notification that asked for receipts
(``status_url``) and was last read in a terminal state must have the matching event, signed. Pure.

What the history holds:
- ``ingest`` invocations with ``receipts=True`` (``Api.ingest(status_url=...)``): the notifications that asked;
- ``status`` observations (``Api.status``): each delivery's ``status`` and ``webhook_status`` as last read;
- ``receipts`` observations (``record_receipts``, from the sink's calls): one per POST the status_url received,
  with its ``events`` and whether its Standard Webhooks signature verified (``signed``).

A terminal state seen without its event is ``missing``; an unsigned POST, an event for a notification that asked
for none, and an event of a type the contract does not name are reported too. Events for states read earlier or
later (a dead socket delivery acknowledged afterwards has both) are allowed: delivery is at least once, ordering
is not guaranteed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from conformance.history import History, Op, pairs

Key = tuple[str, str]  # (notification id, user id)

#: The event each channel's terminal state must produce.
EXPECTED = {
    "socket": {"delivered": "delivery.delivered", "dead": "delivery.dead", "expired": "delivery.expired",
               "replaced": "delivery.replaced"},
    "webhook": {"succeeded": "delivery.delivered", "dead": "delivery.dead", "expired": "delivery.expired"},
}
TYPES = frozenset(t for per in EXPECTED.values() for t in per.values())


def record_receipts(history: History, calls: Iterable[tuple[Any, bool]]) -> None:
    """Put the status_url's POSTs (body, signature verified) into ``history`` as ``receipts`` observations."""
    for body, signed in calls:
        events = body.get("events") if isinstance(body, dict) else None
        history.observe("status-url", "receipts", events=events if isinstance(events, list) else None, signed=signed)


def check_receipts(history: Iterable[Op]) -> dict[Key, str]:
    """Problems with receipts, by delivery (``("*", "*")`` for a POST that names no delivery)."""
    ops = list(history)
    asked = {
        str(done.value["id"])
        for inv, done in pairs(ops)
        if inv.f == "ingest" and inv.value.get("receipts") and done is not None and done.type == "ok"
    }
    last: dict[Key, dict[str, Any]] = {}
    got: dict[Key, set[tuple[str, str]]] = {}
    problems: dict[Key, str] = {}
    for op in ops:
        if op.type != "ok":
            continue
        if op.f == "status":
            last[(str(op.value["id"]), op.value["user_id"])] = op.value
        elif op.f == "receipts":
            _read_post(op, asked, got, problems)
    for key, state in last.items():
        if key[0] not in asked:
            continue
        for channel, field in (("socket", "status"), ("webhook", "webhook_status")):
            want = EXPECTED[channel].get(str(state.get(field)))
            if want is not None and (channel, want) not in got.get(key, set()):
                problems.setdefault(key, f"{channel} channel {state.get(field)}, but no {want} receipt arrived")
    return problems


def _read_post(op: Op, asked: set[str], got: dict[Key, set[tuple[str, str]]], problems: dict[Key, str]) -> None:
    events = op.value.get("events")
    if not isinstance(events, list) or not events:
        problems[("*", "*")] = f"a status_url POST without events: {events!r:.200}"
        return
    for event in events:
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(data, dict) or "notification_id" not in data or "user_id" not in data:
            problems[("*", "*")] = f"an event without notification_id and user_id: {event!r:.200}"
            continue
        key = (str(data["notification_id"]), str(data["user_id"]))
        if not op.value.get("signed"):
            problems[key] = "a receipt whose signature did not verify"
        if key[0] not in asked:
            problems[key] = f"a {event.get('type')} receipt for a notification that asked for none"
        if event.get("type") not in TYPES or data.get("channel") not in EXPECTED:
            problems[key] = f"a receipt of unknown type or channel: {event!r:.200}"
        got.setdefault(key, set()).add((str(data.get("channel")), str(event.get("type"))))
