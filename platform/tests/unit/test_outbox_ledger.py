"""The outbox ledger: a commit's row may be deleted only once every one of its notifications was XADDed, in
whatever slices the enqueue loop cut; a failed slice keeps the rows of every commit it touched, even when a
later slice of the same commit succeeds (deleting it then would lose the failed part from the outbox)."""

from __future__ import annotations

import uuid

import pytest

from notiflow.service.enqueue import OutboxLedger

A, B, C = (uuid.UUID(int=n) for n in (1, 2, 3))


def test_a_commit_settles_only_with_its_last_slice() -> None:
    ledger = OutboxLedger()
    ledger.committed(A, 3)
    ledger.committed(B, 2)
    first = ledger.take(2)  # two of A's three
    assert OutboxLedger.settled(first, ok=True) == []
    second = ledger.take(3)  # A's last, and all of B
    assert OutboxLedger.settled(second, ok=True) == [A, B]
    assert len(ledger) == 0


def test_a_failed_slice_keeps_the_rows_of_every_commit_it_touched() -> None:
    ledger = OutboxLedger()
    ledger.committed(A, 2)
    ledger.committed(B, 2)
    ledger.committed(C, 1)
    failed = ledger.take(3)  # all of A, one of B
    assert OutboxLedger.settled(failed, ok=False) == []
    later = ledger.take(2)  # B's other one, and C
    assert OutboxLedger.settled(later, ok=True) == [C]  # B's first part never reached the stream


def test_taking_more_than_was_committed_is_a_bug_named_at_once() -> None:
    ledger = OutboxLedger()
    ledger.committed(A, 1)
    with pytest.raises(ValueError, match="1 notifications taken beyond"):
        ledger.take(2)
    with pytest.raises(ValueError, match="at least one"):
        ledger.committed(B, 0)
