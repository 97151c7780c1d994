"""What one Redis shard carries, for docs/capacity.md: stream deliveries, Pub/Sub messages and presence lookups per
second of the shard's CPU (a Redis shard runs its commands on one core, so that is its ceiling), measured on an
embedded cluster of ``--masters`` masters through notiflow's own adapters (streams/), with each master's commands
per second, which shows how the partitions spread the load.

    .venv/bin/python -m loadtests.shard_capacity --masters 3 --partitions 12 --seconds 5

Each phase runs closed-loop for ``--seconds`` and reads every master's ``used_cpu_user + used_cpu_sys`` and
``total_commands_processed`` before and after. The client runs on the same machine: the figures per shard CPU
second hold whatever the client's own speed; a shared machine makes them indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from notiflow.config import Settings
from notiflow.devstack.cluster import EmbeddedRedisCluster
from notiflow.frames import FrameTemplate
from notiflow.models import Carried, Channel, StreamEntry
from notiflow.streams import bundle
from notiflow.streams.client import close_redis, connect_redis
from notiflow.streams.keys import partition_slots
from notiflow.streams.presence import Presence
from notiflow.streams.pubsub import Router
from notiflow.streams.work import WorkStream

BATCH = 500  # deliveries per stream batch, users per presence lookup
RECIPIENTS = 50  # recipients per Pub/Sub message (a node's share of a fan-out batch)


def _shards(cluster: EmbeddedRedisCluster) -> dict[int, tuple[float, int]]:
    out = {}
    for port in cluster.ports[: cluster.masters]:
        with cluster.client(port) as r:
            cpu: dict[str, Any] = r.info("cpu")
            stats: dict[str, Any] = r.info("stats")
        out[port] = (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(stats["total_commands_processed"]))
    return out


async def _phase(cluster: EmbeddedRedisCluster, seconds: float, step: Callable[[], Awaitable[int]]) -> dict[str, Any]:
    before, started, done = _shards(cluster), time.monotonic(), 0
    while time.monotonic() - started < seconds:
        done += await step()
    wall = time.monotonic() - started
    after = _shards(cluster)
    cpu = {p: after[p][0] - before[p][0] for p in after}
    cmds = {p: (after[p][1] - before[p][1]) / wall for p in after}
    return {"per_s": done / wall, "per_shard_cpu_s": done / max(sum(cpu.values()), 1e-9),
            "shard_cpu": {p: round(c / wall, 2) for p, c in cpu.items()},
            "shard_cmds_per_s": {p: round(c) for p, c in cmds.items()}}


async def run(masters: int, partitions: int, seconds: float) -> None:
    with EmbeddedRedisCluster(masters, 0) as cluster:
        cluster.balance(partition_slots(partitions))
        s = Settings(redis_url=cluster.url, redis_cluster=True, stream_partitions=partitions, key_prefix="cap")
        r = connect_redis(cluster.url, cluster=True)
        try:
            work, presence, router = WorkStream(r, s), Presence(r, s), Router(r, s)
            await work.ensure_group()
            now = datetime.now(UTC)
            users = [f"user-{i}" for i in range(20_000)]

            async def stream_step() -> int:
                nid = uuid.uuid4()
                batch = [StreamEntry(nid, (u,), Channel.SOCKET, Carried((1,), "e.v", '{"k":1}', now, None))
                         for u in users[:BATCH]]
                await work.add(batch)
                got = [x for p in work.partitions for x in await work.read("c", 1000, 1, p)]
                await work.ack([i for i, _ in got], [bundle.units(f) for _, f in got])
                return len(batch)

            print("stream (bundled socket deliveries: add, read, ack):", await _phase(cluster, seconds, stream_step))

            listeners = []
            for n in range(30):
                ps: Any = r.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
                await ps.ssubscribe(router.channel(f"gw{n}"))
                listeners.append(ps)
            template = FrameTemplate('{"type":"notification","id":"x","seq":', ',"event":"e","payload":{}}')
            per_node = {f"gw{n}": {template: [(u, 1) for u in users[:RECIPIENTS]]} for n in range(30)}

            async def publish_step() -> int:
                await router.publish(per_node)
                for ps in listeners:
                    while await ps.get_sharded_message(timeout=0.0):
                        pass
                return len(per_node)

            print(f"sharded pubsub ({RECIPIENTS} recipients a message):", await _phase(cluster, seconds, publish_step))

            await presence.heartbeat("gw0", {})
            for i in range(0, 5000, 50):
                await asyncio.gather(*(presence.connect("gw0", u) for u in users[i : i + 50]))
            lookup = users[:BATCH]

            async def presence_step() -> int:
                await presence.live_nodes(lookup)
                return len(lookup)

            print("presence lookups (users):", await _phase(cluster, seconds, presence_step))
        finally:
            await close_redis(r, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(run(args.masters, args.partitions, args.seconds))


if __name__ == "__main__":
    main()
