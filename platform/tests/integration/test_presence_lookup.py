"""The worker's presence lookup (streams/presence.py ``_LOOKUP``): each user's live nodes, a dead node's entries
pruned from every user that names it, each node's liveness read once per call."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from notiflow.config import Settings
from notiflow.streams.presence import Presence

pytestmark = pytest.mark.timeout(30)


async def test_live_nodes_per_user_and_a_dead_nodes_entries_pruned_for_every_user(
    rds: aioredis.Redis, settings: Settings
) -> None:
    presence = Presence(rds, settings)
    for node in ("live", "dead"):
        await presence.heartbeat(node, {})
    sockets = {"ann": ["live", "dead"], "bob": ["dead"], "cy": ["live"], "dee": ["dead", "dead"]}
    for user, nodes in sockets.items():
        for node in nodes:
            await presence.connect(node, user)
    # The dead node stopped beating long ago: its score in every partition lies in the past.
    for p in presence.keys.partitions:
        await rds.zadd(presence.keys.nodes(p), {"dead": 1})

    found = await presence.live_nodes(["ann", "bob", "cy", "dee", "eve"])

    assert found == {"ann": ["live"], "bob": [], "cy": ["live"], "dee": [], "eve": []}
    # Pruned where the lookup met it, for each user: the first to name it and those after (its liveness cached).
    for user in sockets:
        assert "dead" not in await rds.hkeys(presence.keys.presence(user)), user
    assert await rds.hgetall(presence.keys.presence("ann")) == {"live": "1"}
