"""The client's socket acks: what it sends again when a socket dies (SPEC §3: each ack frame is answered
with ``acked`` or ``ack_failed`` unless the socket closes first)."""

from __future__ import annotations

from typing import Any, cast

from notiflow.client.api import Link


def test_an_answered_socket_ack_is_not_resent_and_an_unanswered_one_is() -> None:
    link = Link(cast(Any, None), "ws://gateway")
    link.sent(["a", "b"])
    link.sent(["c"])
    link.sent(["d"])
    link.confirmed(["c"])
    link.confirmed(["x"])  # not one of ours: changes nothing
    assert [ids for _, ids in link.sent_acks] == [["a", "b"], ["d"]]
