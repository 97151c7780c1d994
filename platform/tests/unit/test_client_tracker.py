"""The client's seen-tracker: the resume watermark never passes a seq it has not seen, memory is bounded."""

from __future__ import annotations

import pytest

from notiflow.client import SeenTracker


def test_the_watermark_follows_contiguous_seqs_and_waits_at_a_gap() -> None:
    t = SeenTracker()
    for seq in (1, 2, 4, 5):
        t.add(f"n{seq}", seq)
    assert t.watermark == 2 and t.gaps  # 3 arrived late (it was retrying): resume must read after 2
    t.add("n3", 3)
    assert t.watermark == 5 and not t.gaps


def test_a_read_queue_closes_gaps_below_what_it_covered() -> None:
    t = SeenTracker(after_seq=10)
    t.add("a", 12)
    t.add("b", 14)
    t.raise_to(12)  # the queue read after 10 held nothing below 12: 11 was closed (acked elsewhere, expired)
    assert t.watermark == 12 and t.gaps
    t.raise_to(13)
    assert t.watermark == 14 and not t.gaps


def test_duplicates_are_known_by_seq_below_the_watermark_and_by_id_above() -> None:
    t = SeenTracker(after_seq=5, window=3)
    assert t.seen("old", 5) and not t.seen("new", 6)
    t.add("x", 9)
    assert t.seen("x", 9) and t.seen("x", 100) and not t.seen("y", 8)


def test_memory_is_bounded_by_the_window() -> None:
    t = SeenTracker(window=4)
    for seq in range(2, 100):  # seq 1 never comes: the gap is jumped once the window is full
        t.add(f"n{seq}", seq)
    assert len(t._ids) == 4 and len(t._above) <= 4
    assert t.watermark >= 95


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SeenTracker(window=0)
