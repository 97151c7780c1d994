"""Chaos on a Redis Cluster: the platform on 3 masters with a replica each (devstack/cluster.py), 12 partitions.

Scenarios (run by chaos/test_redis_cluster.py with the suite's runner, so the same checker: lost = 0,
unexpected = 0, recovered within the profile's bound):
- SIGKILL of the master that serves partition 0 while traffic flows: its replica is promoted; writes the dead
  master acknowledged but had not replicated are lost from Redis, and the reconciler puts back what PostgreSQL
  says is missing. The dead node comes back empty as a replica on heal.
- One master cut off from every client (and its replica) through the Toxiproxy-compatible server, its cluster
  bus left alone so that no failover follows: the partitions and channels on it are unavailable, the others
  go on, and what was held back goes through after heal.
- A slot migration of partition 0 (its stream with the consumer group and its pending entries, its retry
  schedule, presence, counters) to another master, mid-traffic, as ``redis-cli --cluster reshard`` does it.
  Entries read first by a consumer that never acks are pending when the slot moves: the live workers reclaim
  them on the destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from chaos.cluster import QUICK_RECOVERY_ENV, ChaosTarget, ToxiproxyServer
from chaos.nemesis import Nemesis, Outage
from chaos.runner import Ctx, Scenario
from chaos.toxi import Toxi
from conformance.cluster import Stores
from conformance.sink import WebhookSink

MASTERS, PARTITIONS = 3, 12
#: The proxy in front of the last master: every client and its replica reach it through there.
CUT_PROXY = "redis_master"


def partition_slot(target: ChaosTarget, partition: int) -> int:
    return key_slot(f"{target.key_prefix}:{{p{partition}}}:retry".encode())


class RedisClusterChaos:
    """Starts the cluster, the stack and the webhook sink; ``start()`` gives the ChaosTarget, ``stop()`` ends all."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="notiflow-chaos-cluster-"))
        self._cleanup = contextlib.ExitStack()
        self.redis: Any = None

    def start(self) -> ChaosTarget:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> ChaosTarget:
        from notiflow.config import Settings
        from notiflow.devstack import DevStack, free_port, free_port_range
        from notiflow.devstack.cluster import EmbeddedRedisCluster

        server = ToxiproxyServer(self.workdir).start()  # the runner resets it between scenarios
        self._cleanup.callback(server.stop)
        toxi = Toxi(server.url)

        def behind_proxy(ports: list[int]) -> dict[int, int]:
            """The last master is reached through the proxy CUT_PROXY (its cluster bus stays direct)."""
            listen = free_port()
            toxi.create_sync(CUT_PROXY, listen=f"127.0.0.1:{listen}", upstream=f"127.0.0.1:{ports[MASTERS - 1]}")
            return {ports[MASTERS - 1]: listen}

        self.redis = EmbeddedRedisCluster(MASTERS, 1, self.workdir, announce=behind_proxy)
        self.redis.start()
        self._cleanup.callback(self.redis.stop)
        stores = Stores()
        stores.redis_url = self.redis.url
        stores.start()
        self._cleanup.callback(stores.stop)
        database_url, prefix = stores.new_database(), stores.new_prefix()
        sink = WebhookSink().start()
        self._cleanup.callback(sink.stop)
        env = {
            **QUICK_RECOVERY_ENV, "NOTIFLOW_KEY_PREFIX": prefix, "NOTIFLOW_STREAM_KEY": f"{prefix}:stream",
            "NOTIFLOW_WEBHOOK_ALLOWED_HOSTS": sink.host, "NOTIFLOW_WEBHOOK_SECRET": sink.secret,
            "NOTIFLOW_WEBHOOK_ALLOW_PRIVATE": "true",
        }
        settings = Settings(redis_url=self.redis.url, database_url=database_url, redis_cluster=True,
                            stream_partitions=PARTITIONS)
        stack = DevStack(settings, gateways=2, stream_workers=2, retry_workers=1, base_port=free_port_range(2),
                         extra_env=env, workdir=self.workdir / "stack")
        stack.start()
        self._cleanup.callback(stack.stop)
        return ChaosTarget(urls=list(stack.gateway_urls), toxi=toxi, paths={CUT_PROXY: CUT_PROXY}, sink=sink,
                           stack=stack, redis_url=self.redis.url, stream_key=f"{prefix}:stream", key_prefix=prefix,
                           env=env, redis_cluster=self.redis)

    def stop(self) -> None:
        self._cleanup.close()


class KillMaster(Nemesis):
    """SIGKILL of the master serving partition 0; waits for its replica's promotion. Heal: the node comes back
    empty as a replica of the new master."""

    name = "SIGKILL of a Redis Cluster master"

    def __init__(self, target: ChaosTarget) -> None:
        super().__init__()
        self.cluster = target.redis_cluster
        self.slot = partition_slot(target, 0)
        self.killed: int | None = None

    async def inject(self) -> None:
        self.killed = self.cluster.master_of_slot(self.slot)
        started = time.monotonic()
        self.cluster.kill(self.killed)
        await asyncio.to_thread(self._wait_promoted, started)

    def _wait_promoted(self, started: float) -> None:
        deadline = started + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self.cluster.master_of_slot(self.slot) != self.killed and self.cluster.healthy():
                    self.details.update(killed=self.killed, promoted=self.cluster.master_of_slot(self.slot),
                                        failover_s=round(time.monotonic() - started, 2))
                    return
            time.sleep(0.1)
        raise AssertionError(f"no replica promoted within 30 s after the master {self.killed} died")

    async def heal(self) -> None:
        if self.killed is not None and "promoted" in self.details:
            await asyncio.to_thread(self.cluster.rejoin, self.killed, self.details["promoted"])


class MigratePartition(Nemesis):
    """Partition 0's slot, with its keys (the stream with the group's pending entries), to another master."""

    name = "slot migration of a partition mid-traffic"

    def __init__(self, target: ChaosTarget) -> None:
        super().__init__()
        self.target, self.cluster = target, target.redis_cluster
        self.slot = partition_slot(target, 0)

    async def inject(self) -> None:
        source = self.cluster.master_of_slot(self.slot)
        masters = sorted({self.cluster.master_of_slot(s) for s in (0, 6000, 12000)} - {source})
        stream = f"{self.target.stream_key}:{{p0}}"
        # Entries read by a consumer that never acks (a worker that died holding them): pending when the slot
        # moves, reclaimed on the destination by the live workers.
        held = await asyncio.to_thread(self._hold, source, stream)
        pending = await asyncio.to_thread(self._pending, source, stream)
        started = time.monotonic()
        moved = await asyncio.to_thread(self.cluster.migrate_slot, self.slot, masters[0])
        self.details.update(source=source, destination=masters[0], keys=moved, held=held, pending_at_start=pending,
                            migration_s=round(time.monotonic() - started, 3))

    def _hold(self, port: int, stream: str) -> int:
        for _ in range(10):
            got = self.cluster.call(port, "XREADGROUP", "GROUP", "notiflow-workers", "chaos-holder", "COUNT", 20,
                                    "BLOCK", 1000, "STREAMS", stream, ">")
            if got:
                rows = got.values() if isinstance(got, dict) else [entries for _, entries in got]
                return sum(len(entries) for entries in rows)
        return 0

    def _pending(self, port: int, stream: str) -> int:
        with contextlib.suppress(Exception):
            summary = self.cluster.call(port, "XPENDING", stream, "notiflow-workers")
            return int(summary["pending"] if isinstance(summary, dict) else summary[0])
        return 0

    async def heal(self) -> None:
        return None


def _probe_cut(target: ChaosTarget) -> dict[str, Any]:
    """Which partitions the clients find behind the cut proxy, and whether that master still answers them."""
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisError

    listen = int(target.toxi.proxies_sync()[CUT_PROXY].listen.rpartition(":")[2])
    with RedisCluster.from_url(str(target.redis_url), socket_timeout=2, socket_connect_timeout=2) as client:
        behind = [p for p in range(PARTITIONS)
                  if client.get_node_from_key(f"{target.key_prefix}:{{p{p}}}:retry").port == listen]
    answers = True
    try:
        with redis.Redis(host="127.0.0.1", port=listen, socket_timeout=2, socket_connect_timeout=2) as node:
            node.ping()
    except (RedisError, OSError):
        answers = False
    return {"partitions_behind_cut": behind, "cut_master_answers": answers}


async def _cut_is_real(c: Ctx) -> None:
    c.extras["cut"] = await asyncio.to_thread(_probe_cut, c.target)


async def _cut_checked(c: Ctx) -> list[str]:
    found = c.extras.get("cut", {})
    problems = []
    if not found.get("partitions_behind_cut"):
        problems.append(f"no partition was behind the cut master: the fault proved nothing ({found})")
    if found.get("cut_master_answers", True):
        problems.append(f"the cut master still answered its clients during the fault ({found})")
    return problems


#: The kill last: the master it kills may be the one behind the cut proxy, whose replica is not.
SCENARIOS: list[Scenario] = [
    Scenario("cluster-cut-master", "one master cut off through the Toxiproxy-compatible server",
             lambda c: Outage(c.target, (CUT_PROXY,)), during=_cut_is_real, check=_cut_checked),
    Scenario("cluster-migrate-slot", "slot migration of a partition with pending entries",
             lambda c: MigratePartition(c.target)),
    Scenario("cluster-kill-master", "SIGKILL of a Redis Cluster master under traffic",
             lambda c: KillMaster(c.target)),
]
