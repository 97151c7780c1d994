"""Notification ids from the pooled source: ordinary version 4 UUIDs, never repeated, fresh in a forked child."""

from __future__ import annotations

import os
import uuid

import pytest

from notiflow import ids


def test_ids_are_random_version_4_uuids_that_behave_like_any_other() -> None:
    made = [ids.new_id() for _ in range(5 * ids.CHUNK + 3)]  # across several refills of the pool
    assert len(set(made)) == len(made)
    for u in made:
        assert type(u) is uuid.UUID
        assert (u.version, u.variant) == (4, uuid.RFC_4122)
        assert uuid.UUID(str(u)) == u and hash(uuid.UUID(bytes=u.bytes)) == hash(u)
    # Not one constant bit beyond the six that version 4 fixes.
    fixed_ones = fixed_zeros = (1 << 128) - 1
    for u in made:
        fixed_ones &= u.int
        fixed_zeros &= ~u.int
    assert bin(fixed_ones).count("1") + bin(fixed_zeros & ((1 << 128) - 1)).count("1") == 6


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
