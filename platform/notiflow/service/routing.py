"""Which gateway node gets which frame, and which deliveries no node heard: the socket channel's pure routing step.

A batch holds fresh entries, which carry their frame's parts (routed entry by entry: no object per
recipient, the frame encoded once per notification), and loaded deliveries (retries, reclaims, the
reconciler's). Presence says which nodes hold a live socket of each user; the publish says which nodes heard.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping

from notiflow.frames import FrameTemplate, NodeBatch, frame_template
from notiflow.models import DeliveryWork, StreamEntry
from notiflow.service.dispatch_log import Key

#: User id -> the nodes holding a live socket of that user.
Nodes = Mapping[str, list[str] | set[str] | tuple[str, ...]]


def frames_per_node(fresh: list[StreamEntry], live: list[DeliveryWork], nodes: Nodes) -> dict[str, NodeBatch]:
    """Per node, each notification's frame template with the (user, seq) pairs it goes to there. Users
    with no live node get nothing (and no template is built for them)."""
    per_node: dict[str, NodeBatch] = defaultdict(dict)
    templates: dict[uuid.UUID, FrameTemplate] = {}
    for e in fresh:
        c = e.carried
        assert c is not None, "a fresh entry carries its frame"
        template: FrameTemplate | None = None
        for user, seq in zip(e.user_ids, c.seqs, strict=True):
            at = nodes.get(user)
            if not at:
                continue
            if template is None:
                template = templates.get(e.notification_id)
                if template is None:
                    template = templates[e.notification_id] = frame_template(
                        e.notification_id, c.event, c.payload_json, c.created_at
                    )
            for node in at:
                per_node[node].setdefault(template, []).append((user, seq))
    for w in live:
        at = nodes.get(w.user_id)
        if not at:
            continue
        template = templates.get(w.notification_id)
        if template is None:
            template = templates[w.notification_id] = w.template()
        for node in at:
            per_node[node].setdefault(template, []).append((w.user_id, w.seq))
    return per_node


def unheard(
    fresh: list[StreamEntry], live: list[DeliveryWork], nodes: Nodes, receivers: Mapping[str, int]
) -> list[Key]:
    """The deliveries whose user has no node that heard the publish: they are ``offline``. The others are
    the gateway nodes' to record (``dispatched``, or ``offline`` for a user a node no longer holds), unless
    acknowledged first. Derived per user, not per delivery: a fan-out batch names each user once per
    notification."""
    heard = {n for n, count in receivers.items() if count > 0}
    reached = {u for u, at in nodes.items() if not heard.isdisjoint(at)}
    out: list[Key] = [(u, e.notification_id) for e in fresh for u in e.user_ids if u not in reached]
    out += [(w.user_id, w.notification_id) for w in live if w.user_id not in reached]
    return out
