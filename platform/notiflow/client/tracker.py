"""What a client has seen: a seq watermark and a bounded window of ids, for resume and de-duplication.

Seqs are per user, contiguous (1, 2, 3, ...) and commit in order (store/migrations/001_core.sql), so
one number says most of what a client has seen: the *watermark* W, "every seq <= W has been seen by
this client, or was already closed (acknowledged elsewhere, expired) when the offline queue was read".
A reconnecting client reads the queue after W, never after the highest seq it saw: a notification can
arrive late (it was retrying) behind a higher one, and reading after the highest would skip it.

De-duplication, in bounded memory:
- anything at or below W was already seen: dropped with no memory at all;
- above W, seqs seen out of order wait in ``_above`` until the gap below them closes; their number is
  bounded by ``window`` (past it the lowest are forgotten and W jumps over the gap: a gap that stays
  open that long is a notification that expired or was acknowledged by another device);
- ids of the last ``window`` notifications are kept too (an LRU), because the protocol de-duplicates
  by id: a frame whose id was seen is dropped even if its seq says otherwise.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict


class SeenTracker:
    """The watermark and bounded id window of one user's stream. Pure logic, no I/O."""

    def __init__(self, after_seq: int = 0, *, window: int = 10_000) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.watermark = after_seq
        self.window = window
        self._above: list[int] = []  # min-heap of seen seqs > watermark
        self._above_set: set[int] = set()
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, notification_id: str, seq: int) -> bool:
        """True if this notification was already seen (a duplicate)."""
        return seq <= self.watermark or seq in self._above_set or notification_id in self._ids

    def add(self, notification_id: str, seq: int) -> None:
        """Record a notification as seen (it is being handed to the consumer)."""
        self._ids[notification_id] = None
        self._ids.move_to_end(notification_id)
        while len(self._ids) > self.window:
            self._ids.popitem(last=False)
        if seq > self.watermark and seq not in self._above_set:
            heapq.heappush(self._above, seq)
            self._above_set.add(seq)
        self._advance()
        while len(self._above) > self.window:  # a gap held open too long: jump over it
            self.raise_to(self._above[0])

    def raise_to(self, seq: int) -> None:
        """Everything at or below ``seq`` is known: seen, or closed when the offline queue was read."""
        if seq > self.watermark:
            self.watermark = seq
        self._advance()

    @property
    def gaps(self) -> bool:
        """True if seqs above the watermark were seen while one below them was not (yet)."""
        return bool(self._above)

    def _advance(self) -> None:
        while self._above and self._above[0] <= self.watermark + 1:
            seq = heapq.heappop(self._above)
            self._above_set.discard(seq)
            self.watermark = max(self.watermark, seq)
