"""An indexed view of a history: ingests, deliveries, sockets and sweeps. Built once, read by the checker."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from conformance.history import Op

Key = tuple[str, str]
TERMINAL = ("delivered", "dead", "expired", "replaced")


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _t(ns: int) -> str:
    return f"{ns / 1e9:.3f}s"


@dataclass(slots=True)
class Ingest:
    """One POST /notifications as the client saw it. ``outcome``: ok, fail, info or pending (no answer)."""

    cid: str
    user_ids: list[str]
    process: str
    node: str
    invoke_ns: int
    ttl: bool = False
    collapse_key: str | None = None
    outcome: str = "pending"
    complete_ns: int | None = None
    id: str | None = None
    status: int | None = None
    error: str | None = None


@dataclass(slots=True)
class Delivery:
    """Everything observed about one (notification id, user id)."""

    cid: str | None = None
    observed: bool = False
    recv_count: dict[str, int] = field(default_factory=dict)
    first_recv_ns: int | None = None
    listed_at_ns: list[int] = field(default_factory=list)
    listed_twice: int = 0
    seqs: set[int] = field(default_factory=set)
    acked_ok_ns: int | None = None  # first ack known applied: an HTTP ack answered 200, or a socket ack confirmed
    ws_ack_sent_ns: int | None = None  # first socket ack frame sent (maybe applied until confirmed)
    ack_invoked_ns: list[int] = field(default_factory=list)
    terminal: str | None = None
    dlq_channels: set[str] = field(default_factory=set)
    events: list[tuple[int, str]] = field(default_factory=list)

    def ack_invoked_before(self, ns: int | None) -> bool:
        return any(ns is None or t <= ns for t in self.ack_invoked_ns)


@dataclass(slots=True)
class Conn:
    conn: str
    user_id: str
    node: str
    live: bool
    open_ns: int
    close_ns: int | None = None
    closed_by: str | None = None
    code: int | None = None


@dataclass(slots=True)
class Sweep:
    user_id: str
    invoke_ns: int
    complete_ns: int
    ids: set[str]
    complete: bool


@dataclass(slots=True)
class Timeline:
    ingests: dict[str, Ingest] = field(default_factory=dict)  # by cid
    by_id: dict[str, Ingest] = field(default_factory=dict)
    ingests_by_user: dict[str, list[Ingest]] = field(default_factory=lambda: defaultdict(list))
    deliveries: dict[Key, Delivery] = field(default_factory=lambda: defaultdict(Delivery))
    conns_by_user: dict[str, list[Conn]] = field(default_factory=lambda: defaultdict(list))
    sweeps_by_user: dict[str, list[Sweep]] = field(default_factory=lambda: defaultdict(list))
    final_sweep: dict[str, Sweep] = field(default_factory=dict)
    page_problems: list[str] = field(default_factory=list)

    # --- queries --------------------------------------------------------------------------------
    def ingest_of(self, nid: str, cid: str | None) -> Ingest | None:
        found = self.by_id.get(nid)
        if found is None and cid is not None:
            found = self.ingests.get(cid)
        return found

    def ok_ingests(self) -> list[Ingest]:
        return [i for i in self.ingests.values() if i.outcome == "ok" and i.id is not None]

    def ok_ingests_for(self, user: str) -> list[Ingest]:
        return [i for i in self.ingests_by_user.get(user, []) if i.outcome == "ok" and i.id is not None]

    def story(self, key: Key) -> str:
        nid = key[0]
        d = self.deliveries.get(key) or Delivery()
        events = list(d.events)
        ing = self.ingest_of(nid, d.cid)
        if ing is not None:
            events.append((ing.invoke_ns, f"{ing.process} sent {ing.cid} via {ing.node}"))
            if ing.complete_ns is not None:
                events.append((ing.complete_ns, f"ingest {ing.outcome} {ing.status or ''}".rstrip()))
        return "; ".join(f"{_t(t)} {what}" for t, what in sorted(events)) or "nothing recorded"

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, ops: list[Op], matched: list[tuple[Op, Op | None]]) -> Timeline:
        tl = cls()
        for inv, done in matched:
            if inv.f == "ingest":
                tl._add_ingest(inv, done)
        up_to: list[tuple[str, int, Op, Op | None]] = []
        for inv, done in matched:
            if inv.f == "ack":
                tl._add_http_ack(inv, done, up_to)
            elif inv.f == "fetch" and done is not None and done.type == "ok":
                tl._add_listing(inv.value["user_id"], done.value["items"], inv.time_ns, "fetch")
                tl._check_page(inv.value["user_id"], done.value["items"], inv.value.get("after_seq", 0))
        for op in ops:
            if op.type != "ok" or op.f in ("ingest", "ack", "fetch"):
                continue
            getattr(tl, f"_obs_{op.f}", tl._obs_ignore)(op)
        for user, seq, inv, done in up_to:
            for (_, u), d in list(tl.deliveries.items()):
                if u == user and d.seqs and max(d.seqs) <= seq:
                    tl._mark_ack(d, inv, done, f"acknowledged up_to_seq {seq}")
        for user, sweeps in tl.sweeps_by_user.items():
            done_sweeps = [s for s in sweeps if s.complete]
            if done_sweeps:
                tl.final_sweep[user] = max(done_sweeps, key=lambda s: s.invoke_ns)
        return tl

    def _add_ingest(self, inv: Op, done: Op | None) -> None:
        val = inv.value
        ing = Ingest(
            cid=val["cid"],
            user_ids=list(val["user_ids"]),
            process=inv.process,
            node=val.get("node", "?"),
            invoke_ns=inv.time_ns,
            ttl=bool(val.get("ttl")),
            collapse_key=val.get("collapse_key"),
        )
        if done is not None:
            ing.outcome, ing.complete_ns = done.type, done.time_ns
            ing.status, ing.error = done.value.get("status"), done.value.get("error")
            if done.type == "ok":
                ing.id = str(done.value["id"])
                self.by_id[ing.id] = ing
        self.ingests[ing.cid] = ing
        for user in ing.user_ids:
            self.ingests_by_user[user].append(ing)

    def _mark_ack(self, d: Delivery, inv: Op, done: Op | None, what: str) -> None:
        d.ack_invoked_ns.append(inv.time_ns)
        if done is not None and done.type == "ok":
            if d.acked_ok_ns is None or done.time_ns < d.acked_ok_ns:
                d.acked_ok_ns = done.time_ns
            d.events.append((done.time_ns, f"{what} (ok, acknowledged={done.value.get('acknowledged')})"))
        else:
            d.events.append((inv.time_ns, f"{what} ({done.type if done else 'never completed'})"))

    def _add_http_ack(self, inv: Op, done: Op | None, up_to: list[tuple[str, int, Op, Op | None]]) -> None:
        user = inv.value["user_id"]
        if "up_to_seq" in inv.value:
            up_to.append((user, int(inv.value["up_to_seq"]), inv, done))
            return
        for nid in inv.value.get("ids", []):
            self._mark_ack(self.deliveries[(str(nid), user)], inv, done, f"{user} acknowledged over HTTP")

    def _add_listing(self, user: str, items: list[dict[str, Any]], invoke_ns: int, how: str) -> None:
        seen: set[str] = set()
        for item in items:
            nid = str(item["id"])
            d = self.deliveries[(nid, user)]
            d.observed = True
            d.cid = d.cid or item.get("cid")
            d.listed_at_ns.append(invoke_ns)
            if item.get("seq") is not None:
                d.seqs.add(int(item["seq"]))
            if nid in seen:
                d.listed_twice += 1
            seen.add(nid)
            d.events.append((invoke_ns, f"listed by {how} of {user} (seq {item.get('seq')})"))

    def _check_page(self, user: str, items: list[dict[str, Any]], after_seq: int, what: str = "page") -> None:
        last = after_seq or 0
        for item in items:
            seq = item.get("seq")
            if seq is None or int(seq) <= last:
                self.page_problems.append(
                    f"user {user}: {what} lists {item['id']} with seq {seq} after seq {last} (not ascending)"
                )
            else:
                last = int(seq)

    # --- observations -----------------------------------------------------------------------------
    def _obs_ignore(self, op: Op) -> None:
        return None

    def _obs_ws_open(self, op: Op) -> None:
        v = op.value
        self.conns_by_user[v["user_id"]].append(
            Conn(v["conn"], v["user_id"], v.get("node", "?"), bool(v.get("live")), op.time_ns)
        )

    def _conn(self, user: str, conn: str) -> Conn | None:
        return next((c for c in self.conns_by_user.get(user, []) if c.conn == conn), None)

    def _obs_ws_close(self, op: Op) -> None:
        c = self._conn(op.value["user_id"], op.value["conn"])
        if c is not None and c.close_ns is None:
            c.close_ns, c.closed_by, c.code = op.time_ns, op.value.get("by"), op.value.get("code")

    def _obs_ws_recv(self, op: Op) -> None:
        v = op.value
        d = self.deliveries[(str(v["id"]), v["user_id"])]
        d.observed = True
        d.cid = d.cid or v.get("cid")
        d.recv_count[v["conn"]] = d.recv_count.get(v["conn"], 0) + 1
        if d.first_recv_ns is None:
            d.first_recv_ns = op.time_ns
        if v.get("seq") is not None:
            d.seqs.add(int(v["seq"]))
        d.events.append((op.time_ns, f"received on {v['conn']} (seq {v.get('seq')})"))

    def _obs_ws_ack(self, op: Op) -> None:
        for nid in op.value["ids"]:
            d = self.deliveries[(str(nid), op.value["user_id"])]
            d.ack_invoked_ns.append(op.time_ns)
            if d.ws_ack_sent_ns is None:
                d.ws_ack_sent_ns = op.time_ns
            d.events.append((op.time_ns, f"ack frame sent on {op.value['conn']}"))

    def _obs_ws_acked(self, op: Op) -> None:
        """A confirmed socket ack holds like an HTTP ack that answered 200: never listed again after it."""
        for nid in op.value["ids"]:
            d = self.deliveries[(str(nid), op.value["user_id"])]
            if d.acked_ok_ns is None or op.time_ns < d.acked_ok_ns:
                d.acked_ok_ns = op.time_ns
            d.events.append((op.time_ns, f"ack confirmed on {op.value['conn']}"))

    def _obs_ws_ack_failed(self, op: Op) -> None:
        for nid in op.value["ids"]:
            d = self.deliveries[(str(nid), op.value["user_id"])]
            d.events.append((op.time_ns, f"ack_failed on {op.value['conn']} (unconfirmed: may come back)"))

    def _obs_sweep(self, op: Op) -> None:
        v = op.value
        user, started = v["user_id"], int(v.get("started_ns", op.time_ns))
        items = v["items"]
        self._add_listing(user, items, started, "sweep")
        self._check_page(user, items, 0, "sweep")
        sweep = Sweep(user, started, op.time_ns, {str(i["id"]) for i in items}, bool(v.get("complete")))
        self.sweeps_by_user[user].append(sweep)

    def _obs_status(self, op: Op) -> None:
        v = op.value
        d = self.deliveries[(str(v["id"]), v["user_id"])]
        if v.get("seq") is not None:
            d.seqs.add(int(v["seq"]))
        if v.get("status") in TERMINAL:
            d.terminal = v["status"]
        d.events.append((op.time_ns, f"status read: {v.get('status')}"))

    def _obs_dlq(self, op: Op) -> None:
        for entry in op.value["entries"]:
            d = self.deliveries[(str(entry["notification_id"]), entry["user_id"])]
            d.dlq_channels.add(str(entry.get("channel")))
            if entry.get("channel", "socket") != "webhook":
                d.terminal = "dead"
            d.events.append((op.time_ns, f"in the DLQ (channel {entry.get('channel')})"))
