"""Collapse keys in a history (the contract's "Collapse keys"): which deliveries a newer notification with the same
key for the same user may have replaced, and which it must have. Pure, read by the checker.

"Newer" is a higher per-user seq. The history knows a seq when a delivery was listed, received or read by status;
otherwise acceptance order stands in for it (I4: a notification sent after another was accepted gets a higher seq).
So B is *known newer* than A (same user and key) when both seqs were seen and B's is higher, or, failing that, when
B was sent after A was accepted; B is *possibly newer* when A is not known newer than B.

- A delivery with a known-newer one needs nothing else for I1 (replaced, or acknowledged first: either is final),
  and must never be listed by a read that began after that newer one was accepted (``relisted``).
- A delivery read as ``replaced`` must have a possibly-newer one; else nothing could replace it, and it is lost.
- A sweep may miss a delivery that a possibly-newer one, sent before the sweep ended, may have replaced (I3), and a
  live socket need not receive one that has a possibly-newer one (it may be replaced before it is pushed).
The newest of each key has no known-newer one: like any other delivery it must be acknowledged or in the final
sweep, which is how "the newer one arrives" is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conformance.timeline import Delivery, Ingest, Timeline

Key = tuple[str, str]  # (notification id, user id)


@dataclass(slots=True)
class Collapse:
    known_newer: dict[Key, Ingest] = field(default_factory=dict)
    possibly_newer: dict[Key, list[Ingest]] = field(default_factory=dict)

    def may_be_replaced_by(self, key: Key, before_ns: int | None = None) -> bool:
        """True when a possibly-newer delivery of the key, sent before ``before_ns`` (any time: None), exists."""
        return any(before_ns is None or b.invoke_ns < before_ns for b in self.possibly_newer.get(key, ()))


def _seq(tl: Timeline, nid: str, user: str) -> int | None:
    d = tl.deliveries.get((nid, user))
    return next(iter(d.seqs)) if d is not None and len(d.seqs) == 1 else None


def _newer(tl: Timeline, user: str, a: Ingest, b: Ingest) -> bool:
    """Whether ``b`` is known to be newer than ``a`` for ``user``."""
    assert a.id is not None and b.id is not None
    sa, sb = _seq(tl, a.id, user), _seq(tl, b.id, user)
    if sa is not None and sb is not None:
        return sb > sa
    return a.complete_ns is not None and a.complete_ns < b.invoke_ns


def build(tl: Timeline) -> Collapse:
    out = Collapse()
    groups: dict[tuple[str, str], list[Ingest]] = {}
    for ing in tl.ok_ingests():
        if ing.collapse_key is not None:
            for user in ing.user_ids:
                groups.setdefault((user, ing.collapse_key), []).append(ing)
    for (user, _), ingests in groups.items():
        for a in ingests:
            assert a.id is not None
            key = (a.id, user)
            for b in ingests:
                if b is a:
                    continue
                if _newer(tl, user, a, b):
                    out.known_newer.setdefault(key, b)
                if not _newer(tl, user, b, a):
                    out.possibly_newer.setdefault(key, []).append(b)
    return out


def relisted(tl: Timeline, col: Collapse) -> dict[Key, str]:
    """Deliveries listed by a read that began after a known-newer one of their key was accepted."""
    found: dict[Key, str] = {}
    for key, b in col.known_newer.items():
        d = tl.deliveries.get(key) or Delivery()
        assert b.complete_ns is not None
        later = [t for t in d.listed_at_ns if t > b.complete_ns]
        if later:
            found[key] = (
                f"replaced by {b.id} (same collapse key, accepted at {b.complete_ns / 1e9:.3f}s), listed again by a"
                f" read begun at {later[0] / 1e9:.3f}s"
            )
    return found
