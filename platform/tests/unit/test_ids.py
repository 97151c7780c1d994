"""Notification ids from the pooled source: time-ordered version 7 UUIDs, never repeated, fresh in a forked child."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from notiflow import ids


def test_ids_are_time_ordered_version_7_uuids_that_behave_like_any_other() -> None:
    before = datetime.now(UTC)
    made = [ids.new_id() for _ in range(5 * ids.CHUNK + 3)]  # across several refills of the pool
    after = datetime.now(UTC)
    assert len(set(made)) == len(made)
    for u in made:
        assert type(u) is uuid.UUID
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
        assert uuid.UUID(str(u)) == u and hash(uuid.UUID(bytes=u.bytes)) == hash(u)
        at = ids.made_at(u)
        assert at is not None and before - timedelta(milliseconds=1) <= at <= after
        # The id sorts within its creation millisecond's partition bounds.
        assert ids.lowest_id(at) <= u < ids.lowest_id(at + timedelta(milliseconds=1))
    # The 74 bits below the timestamp, apart from version and variant, are random: none is constant.
    fixed_ones = fixed_zeros = (1 << 80) - 1
    for u in made:
        fixed_ones &= u.int
        fixed_zeros &= ~u.int
    assert bin(fixed_ones).count("1") + bin(fixed_zeros & ((1 << 80) - 1)).count("1") == 6


def test_an_id_made_at_a_time_names_that_time_and_a_random_id_names_none() -> None:
    when = datetime(2026, 12, 7, 12, 30, tzinfo=UTC)
    assert ids.made_at(ids.id_at(when)) == when
    assert ids.made_at(uuid.uuid4()) is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    ids.new_id()  # the pool holds ids not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id, then leave at once
        os.write(write, ids.new_id().bytes)
        os._exit(0)
    os.close(write)
    child = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    assert child != ids.new_id()
