"""A total-queue checker for notification histories. Pure: it reads a history and returns a verdict.

The queue element is one *delivery*: a notification id and one of its recipients. The checker reports

- ``lost``: accepted (202) deliveries that reached none of: acknowledged by their user, present in the user's
  final offline-queue sweep, expired (SPEC I1). A dead socket delivery (its retries ran out: a DLQ row for
  operators) must still be in its user's queue (SPEC §4), so ``dead`` explains nothing on its own;
- ``unexpected``: deliveries observed although never attempted, observed by a user who is not a recipient, or
  observed although their ingest definitely failed;
- ``duplicated``: deliveries received more than once on one socket, or listed twice in one queue read
  (allowed: at-least-once; reported);
- ``recovered``: deliveries whose ingest had an unknown outcome (timeout) and which were observed after all;
- ``missed_live``: deliveries a socket that was open the whole time did not receive (I2);
- ``gaps`` and ``resurrected``: complete offline sweeps missing a committed, unacknowledged delivery, and
  reads listing a delivery after its user's acknowledgement had completed (I3). An acknowledgement has completed
  when the ack endpoint answered 200, or when the gateway confirmed a socket ack (``acked`` frame, SPEC §3); a
  socket ack that was sent but not confirmed may or may not have been applied: it explains a delivery's absence
  from the final sweep, and the delivery may still come back;
- ``order``: per-user ``seq`` violations: a seq reused or changed, acceptance order broken, an unsorted
  page (I4);
- ``receipts``: deliveries of notifications that asked for delivery receipts (``status_url``) whose terminal state
  was read but whose receipt never arrived, or arrived unsigned (receipts.py; docs/contract.md §4a).
- ``relisted``: deliveries listed by a read that began after a newer notification with the same collapse key for
  the same user was accepted (they are ``replaced``: terminal, never listed again; see collapse.py, which also
  says how replacement explains a delivery's absence for I1-I3).

``valid`` is the SPEC's verdict (no lost, no unexpected); ``ok`` additionally requires the I2-I4 checks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from conformance import collapse
from conformance.history import Op, pairs
from conformance.receipts import check_receipts
from conformance.timeline import Delivery, Ingest, Timeline, percentile

Key = tuple[str, str]  # (notification id, user id)


@dataclass(slots=True)
class Verdict:
    """What the checker found. Keys are (notification id, user id) unless said otherwise."""

    lost: dict[Key, str] = field(default_factory=dict)
    unexpected: dict[Key, str] = field(default_factory=dict)
    duplicated: dict[Key, int] = field(default_factory=dict)
    recovered: set[Key] = field(default_factory=set)
    missed_live: dict[Key, list[str]] = field(default_factory=dict)
    gaps: dict[Key, str] = field(default_factory=dict)
    resurrected: dict[Key, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    receipts: dict[Key, str] = field(default_factory=dict)
    relisted: dict[Key, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    stories: dict[Key, str] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.lost and not self.unexpected

    @property
    def ok(self) -> bool:
        clean = not (
            self.missed_live or self.gaps or self.resurrected or self.order or self.receipts or self.relisted
        )
        return self.valid and clean

    def report(self, limit: int = 25) -> str:
        counters = " ".join(f"{k}={v}" for k, v in self.stats.items())
        lines = [f"checker: valid={self.valid} ok={self.ok} {counters}"]
        missed = ((k, "not received on open socket(s) " + ", ".join(v)) for k, v in self.missed_live.items())
        sections: list[tuple[str, Iterable[tuple[Key, Any]]]] = [
            ("LOST", self.lost.items()),
            ("UNEXPECTED", self.unexpected.items()),
            ("MISSED LIVE", missed),
            ("GAPS", self.gaps.items()),
            ("RESURRECTED", self.resurrected.items()),
            ("RECEIPTS", self.receipts.items()),
            ("REPLACED BUT LISTED", self.relisted.items()),
            ("DUPLICATED", ((k, f"received {n} times") for k, n in self.duplicated.items())),
        ]
        for title, items in sections:
            rows = sorted(items, key=lambda kv: (kv[0][1], kv[0][0]))
            if not rows:
                continue
            lines.append(f"{title} ({len(rows)}):")
            for (nid, user), why in rows[:limit]:
                lines.append(f"  notification {nid} user {user}: {why}")
                story = self.stories.get((nid, user))
                if story:
                    lines.append(f"    history: {story}")
            if len(rows) > limit:
                lines.append(f"  ... and {len(rows) - limit} more")
        if self.order:
            lines.append(f"ORDER ({len(self.order)}):")
            lines.extend(f"  {line}" for line in self.order[:limit])
            if len(self.order) > limit:
                lines.append(f"  ... and {len(self.order) - limit} more")
        if self.recovered:
            lines.append(f"recovered (unknown ingest outcome, observed after all): {len(self.recovered)}")
        return "\n".join(lines)


def check(history: Iterable[Op]) -> Verdict:
    """Judge one history. See the module docstring for what each field of the verdict means."""
    ops = list(history)
    tl = Timeline.build(ops, pairs(ops))
    col = collapse.build(tl)
    v = Verdict()
    _check_unexpected(tl, v)
    _check_final_state(tl, col, v)
    _check_live(tl, col, v)
    _check_sweeps(tl, col, v)
    _check_order(tl, v)
    v.receipts = check_receipts(ops)
    v.relisted = collapse.relisted(tl, col)
    _collect_stats(tl, v)
    for key in {*v.lost, *v.unexpected, *v.missed_live, *v.gaps, *v.resurrected, *v.relisted}:
        v.stories[key] = tl.story(key)
    return v


def _check_unexpected(tl: Timeline, v: Verdict) -> None:
    for key, d in tl.deliveries.items():
        if not d.observed:
            continue
        nid, user = key
        ing = tl.ingest_of(nid, d.cid)
        if ing is None:
            v.unexpected[key] = "observed but never sent by any client"
        elif ing.outcome == "fail":
            v.unexpected[key] = f"observed although its ingest failed ({ing.status} {ing.error})"
        elif user not in ing.user_ids:
            v.unexpected[key] = f"observed by {user!r}, who is not a recipient of ingest {ing.cid}"
        elif ing.id is not None and ing.id != nid:
            v.unexpected[key] = f"ingest {ing.cid} was answered with id {ing.id}, but {nid} carries its cid"
        elif ing.outcome != "ok":
            v.recovered.add(key)
        extra = sum(n - 1 for n in d.recv_count.values()) + d.listed_twice
        if extra:
            v.duplicated[key] = extra


# What takes a socket delivery out of its user's offline queue. ``dead`` does not (SPEC §4: the queue is the
# user's whatever happened on the way; the DLQ row is for operators).
_LEAVES_QUEUE = ("delivered", "expired")


def _explained(d: Delivery) -> bool:
    return d.acked_ok_ns is not None or d.ws_ack_sent_ns is not None or d.terminal in _LEAVES_QUEUE


def _check_final_state(tl: Timeline, col: collapse.Collapse, v: Verdict) -> None:
    for ing in tl.ok_ingests():
        assert ing.id is not None
        for user in ing.user_ids:
            key = (ing.id, user)
            d = tl.deliveries.get(key) or Delivery()
            if d.terminal == "replaced" and not col.may_be_replaced_by(key):
                v.lost[key] = "read as replaced, but no notification with its collapse key that could be newer"
                continue
            if _explained(d) or key in col.known_newer or d.terminal == "replaced":
                continue
            final = tl.final_sweep.get(user)
            if final is None:
                v.lost[key] = "accepted; never acknowledged or expired; its user's queue was never swept"
            elif ing.id not in final.ids:
                v.lost[key] = (
                    f"accepted; not acknowledged or expired, and absent from the final sweep of {user}"
                    f" ({len(final.ids)} items, read at {final.invoke_ns / 1e9:.3f}s)"
                )


def _check_live(tl: Timeline, col: collapse.Collapse, v: Verdict) -> None:
    for ing in tl.ok_ingests():
        assert ing.id is not None and ing.complete_ns is not None
        for user in ing.user_ids:
            key = (ing.id, user)
            d = tl.deliveries.get(key) or Delivery()
            if d.terminal in ("dead", "expired", "replaced") or col.may_be_replaced_by(key):
                continue
            missing = [
                c.conn
                for c in tl.conns_by_user.get(user, [])
                if c.live
                and c.open_ns < ing.invoke_ns
                and c.closed_by != "server"
                and (c.close_ns is None or c.close_ns > ing.complete_ns)
                and d.recv_count.get(c.conn, 0) == 0
            ]
            if missing:
                v.missed_live[key] = missing


def _check_sweeps(tl: Timeline, col: collapse.Collapse, v: Verdict) -> None:
    for user, sweeps in tl.sweeps_by_user.items():
        for sweep in sweeps:
            if not sweep.complete:
                continue
            for ing in tl.ok_ingests_for(user):
                assert ing.id is not None and ing.complete_ns is not None
                if ing.ttl or ing.complete_ns >= sweep.invoke_ns or ing.id in sweep.ids:
                    continue
                d = tl.deliveries.get((ing.id, user)) or Delivery()
                if d.terminal in _LEAVES_QUEUE or d.ack_invoked_before(sweep.complete_ns):
                    continue
                if col.may_be_replaced_by((ing.id, user), sweep.complete_ns):
                    continue
                v.gaps.setdefault(
                    (ing.id, user),
                    f"committed at {ing.complete_ns / 1e9:.3f}s, unacknowledged, missing from the sweep of"
                    f" {user}"
                    f" that began at {sweep.invoke_ns / 1e9:.3f}s",
                )
    for key, d in tl.deliveries.items():
        if d.acked_ok_ns is None:
            continue
        later = [t for t in d.listed_at_ns if t > d.acked_ok_ns]
        if later:
            v.resurrected[key] = (
                f"acknowledged at {d.acked_ok_ns / 1e9:.3f}s, listed again by a read begun at {later[0] / 1e9:.3f}s"
            )


def _check_order(tl: Timeline, v: Verdict) -> None:
    v.order.extend(tl.page_problems)
    seq_owner: dict[tuple[str, int], str] = {}
    for (nid, user), d in sorted(tl.deliveries.items()):
        if len(d.seqs) > 1:
            v.order.append(f"user {user}: notification {nid} seen with different seqs {sorted(d.seqs)}")
        for seq in d.seqs:
            other = seq_owner.setdefault((user, seq), nid)
            if other != nid:
                v.order.append(f"user {user}: seq {seq} carried by both {other} and {nid}")
    for user in sorted(tl.ingests_by_user):
        rows = []
        for ing in tl.ok_ingests_for(user):
            d = tl.deliveries.get((str(ing.id), user))
            if d is not None and len(d.seqs) == 1:
                rows.append((ing, next(iter(d.seqs))))
        by_complete = sorted(rows, key=lambda r: r[0].complete_ns or 0)
        i, best = 0, None
        for ing_b, seq_b in sorted(rows, key=lambda r: r[0].invoke_ns):
            while i < len(by_complete) and (by_complete[i][0].complete_ns or 0) < ing_b.invoke_ns:
                if best is None or by_complete[i][1] > best[1]:
                    best = by_complete[i]
                i += 1
            if best is not None and seq_b <= best[1]:
                v.order.append(
                    f"user {user}: {ing_b.id} (seq {seq_b}) was sent after {best[0].id} (seq {best[1]}) was"
                    " accepted, but did not get a higher seq"
                )


def _collect_stats(tl: Timeline, v: Verdict) -> None:
    oks = tl.ok_ingests()
    live = offline = dead = expired = replaced = dups = 0
    for key, d in tl.deliveries.items():
        if d.recv_count:
            live += 1
            ing = tl.ingest_of(key[0], d.cid)
            if ing is not None and ing.outcome == "ok" and d.first_recv_ns is not None:
                v.latencies_ms.append((d.first_recv_ns - ing.invoke_ns) / 1e6)
        elif d.listed_at_ns:
            offline += 1
        dead += d.terminal == "dead" or bool(d.dlq_channels)
        expired += d.terminal == "expired"
        replaced += d.terminal == "replaced"
        dups += sum(n - 1 for n in d.recv_count.values() if n > 1)
    v.stats = {
        "accepted": len(oks),
        "deliveries": sum(len(i.user_ids) for i in oks),
        "failed": sum(1 for i in tl.ingests.values() if i.outcome == "fail"),
        "unknown": sum(1 for i in tl.ingests.values() if i.outcome not in ("ok", "fail")),
        "delivered_live": live,
        "delivered_offline": offline,
        "dead": dead,
        "expired": expired,
        "replaced": replaced,
        "duplicates": dups,
        "lost": len(v.lost),
        "p50_ms": round(percentile(v.latencies_ms, 50), 1),
        "p99_ms": round(percentile(v.latencies_ms, 99), 1),
    }


def merge_stats(verdicts: Iterable[Verdict]) -> dict[str, Any]:
    """Sum the counters of several verdicts; latency percentiles over all their samples."""
    total: dict[str, Any] = defaultdict(int)
    samples: list[float] = []
    for verdict in verdicts:
        for name, value in verdict.stats.items():
            if not name.endswith("_ms"):
                total[name] += value
        samples.extend(verdict.latencies_ms)
    total["p50_ms"] = round(percentile(samples, 50), 1)
    total["p99_ms"] = round(percentile(samples, 99), 1)
    return dict(total)


__all__ = ["Ingest", "Key", "Verdict", "check", "merge_stats"]
