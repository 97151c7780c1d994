"""The client's socket acks: each ack frame carries a ``ref`` of its own, and what the client sends again when a
socket dies (SPEC §3: an ack frame with ``ref`` is answered with ``acked`` or ``ack_failed`` carrying that ref
unless the socket closes first)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from notiflow.client import api
from notiflow.client.api import Link


def test_each_ack_frame_of_a_link_gets_its_own_ref() -> None:
    link = Link(cast(Any, None), "ws://gateway")
    assert [link.sent([x]) for x in "abc"] == [0, 1, 2]
    assert Link(cast(Any, None), "ws://other").sent(["d"]) == 0  # a counter per socket


def test_an_answered_socket_ack_is_not_resent_and_an_unanswered_one_is() -> None:
    link = Link(cast(Any, None), "ws://gateway")
    first, second, third = link.sent(["a", "b"]), link.sent(["c"]), link.sent(["d"])
    assert link.confirmed(second) == ["c"]  # ack_failed requeues these ids
    assert link.confirmed(second) == []  # answered once: nothing more
    assert link.confirmed(99) == [] and link.confirmed("1") == [] and link.confirmed(None) == []  # not ours
    assert (first, third) == (0, 2)
    assert link.unanswered() == ["a", "b", "d"]
    assert link.unanswered() == []  # forgotten once handed back


def test_unanswered_acks_older_than_the_resend_window_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(api.time, "monotonic", lambda: now[0])
    link = Link(cast(Any, None), "ws://gateway")
    link.sent(["old"])
    now[0] += api.ACK_RESEND_S + 1
    link.sent(["new"])
    assert link.unanswered() == ["new"]
