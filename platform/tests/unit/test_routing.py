"""The socket channel's routing step (service/routing.py): fresh entries are routed entry by entry from what
they carry, loaded deliveries one by one, into the same per-node batches and the same frames."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from notiflow.frames import notification_frame
from notiflow.models import Carried, DeliveryWork, StreamEntry
from notiflow.service.routing import frames_per_node, unheard

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
NID = uuid.UUID(int=7)


def _fresh(users: tuple[str, ...], seqs: tuple[int, ...]) -> StreamEntry:
    return StreamEntry(NID, users, carried=Carried(seqs, "order.shipped", '{"o":1}', NOW, None))


def _loaded(user: str, seq: int) -> DeliveryWork:
    return DeliveryWork(NID, user, seq, "retrying", None, 1, 0, "order.shipped", '{"o":1}', NOW, False, None)


def test_frames_go_to_the_nodes_of_live_users_only_with_each_users_seq() -> None:
    nodes = {"ann": ["n1"], "bob": ["n1", "n2"]}
    per_node = frames_per_node([_fresh(("ann", "bob", "cid"), (3, 9, 4))], [_loaded("bob", 2)], nodes)
    assert set(per_node) == {"n1", "n2"}
    [(template, pairs)] = per_node["n1"].items()  # one template per notification, shared by both kinds
    assert pairs == [("ann", 3), ("bob", 9), ("bob", 2)]
    assert list(per_node["n2"].values()) == [[("bob", 9), ("bob", 2)]]
    assert template.frame(9) == notification_frame(NID, 9, "order.shipped", '{"o":1}', NOW)


def test_no_live_user_no_frame() -> None:
    assert frames_per_node([_fresh(("cid",), (1,))], [_loaded("dee", 5)], {}) == {}


def test_only_deliveries_whose_user_no_node_heard_are_the_workers_to_record_offline() -> None:
    nodes = {"ann": ["n1"], "bob": ["n2"], "dee": ["n2", "n1"]}
    keys = unheard(
        [_fresh(("ann", "bob", "cid", "dee"), (1, 1, 1, 1))], [_loaded("ann", 0), _loaded("bob", 0)], nodes,
        {"n1": 1, "n2": 0},
    )
    assert keys == [("bob", NID), ("cid", NID), ("bob", NID)]
