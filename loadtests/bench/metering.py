"""CPU and memory of both sides of a run, read from ``/proc``: the stack's processes by role (whole process
trees, PostgreSQL's backends included), the load generator, and the machine as a whole."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from notiflow.devstack import DevStack

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float, float, str] | None:
    """(ppid, cpu seconds incl. reaped children, own cpu seconds, command name) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    ppid = int(fields[1])
    own = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14])
    return ppid, (own + children) / _CLK_TCK, own / _CLK_TCK, comm


def _scan() -> tuple[dict[int, list[int]], dict[int, tuple[str, float]]]:
    """Every process: the children of each pid, and each pid's (command, own cpu seconds)."""
    children: dict[int, list[int]] = {}
    own: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            own[int(entry.name)] = (stat[3], stat[2])
    return children, own


def _tree(root: int, children: dict[int, list[int]], seen: set[int] | None = None) -> Iterator[int]:
    """``root`` and its descendants, each once; the pids visited are added to ``seen``."""
    todo = [root]
    seen = set() if seen is None else seen
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            yield pid
            todo.extend(children.get(pid, ()))


def tree_cpu_s(root: int, children: dict[int, list[int]], seen: set[int] | None = None) -> float:
    """CPU seconds of ``root`` and every live descendant. Each live process counts its own time plus
    that of its reaped children, so exited PostgreSQL backends are counted once and live ones once.
    The pids visited are added to ``seen``."""
    stats = (_proc_stat(pid) for pid in _tree(root, children, seen))
    return sum(stat[1] for stat in stats if stat is not None)


_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0  # gone meanwhile


def tree_rss_kb(root: int, children: dict[int, list[int]]) -> int:
    """Resident memory of ``root`` and every live descendant, kB (``/proc/<pid>/statm``)."""
    return sum(_rss_kb(pid) for pid in _tree(root, children))


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


class CpuMeter:
    """Snapshots of the server's process groups (by role) and of this process."""

    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.loadgen_pids: list[int] = []  # client processes (--client-procs), counted with us

    def groups(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name in self.stack.process_names:
            pid = self.stack.supervisor.pid(name)
            if pid is not None:
                out.setdefault(name.rsplit("-", 1)[0], []).append(pid)
        for role, server in (("redis", self.stack.embedded_redis), ("postgres", self.stack.embedded_postgres)):
            if server is not None and server.pid is not None:
                out[role] = [server.pid]
        return out

    def gateway_rss_kb(self) -> int:
        """Resident memory of every gateway process (each gateway's process tree), kB."""
        children, _ = _scan()
        return sum(tree_rss_kb(p, children) for p in self.groups().get("gateway", []))

    def snapshot(self) -> dict[str, Any]:
        children, own = _scan()
        ours: set[int] = {os.getpid()}
        snap: dict[str, Any] = {
            role: sum(tree_cpu_s(p, children, ours) for p in pids) for role, pids in self.groups().items()
        }
        snap["loadgen"] = self_cpu_s() + sum(tree_cpu_s(p, children, ours) for p in self.loadgen_pids)
        busy, total = machine_cpu()
        snap["_machine_busy"], snap["_machine_total"] = busy, total
        snap["_wall"] = time.monotonic()
        snap["_others"] = {pid: v for pid, v in own.items() if pid not in ours}
        return snap

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        wall = b["_wall"] - a["_wall"]
        roles = {k: round(b[k] - a.get(k, 0.0), 2) for k in b if not k.startswith("_")}
        server = round(sum(v for k, v in roles.items() if k != "loadgen"), 2)
        machine_busy = b["_machine_busy"] - a["_machine_busy"]
        machine_total = b["_machine_total"] - a["_machine_total"]
        # Which other programs ran meanwhile (by command name), so a noisy run can be recognised.
        others: Counter[str] = Counter()
        for pid, (comm, cpu) in b["_others"].items():
            others[comm] += cpu - a["_others"].get(pid, (comm, 0.0))[1]
        return {
            "wall_s": round(wall, 2),
            "cpu_s": roles,
            "server_cpu_s": server,
            "server_cores": round(server / wall, 2) if wall else 0.0,
            "loadgen_cores": round(roles.get("loadgen", 0.0) / wall, 2) if wall else 0.0,
            "machine_busy_pct": round(100 * machine_busy / machine_total, 1) if machine_total else 0.0,
            # Busy time neither side's processes account for: kernel work (loopback softirqs) and any
            # other program running on the machine meanwhile (which skews every figure: check it is ~0).
            "other_cores": round(machine_busy / wall - (server + roles.get("loadgen", 0.0)) / wall, 2) if wall else 0.0,
            "other_top": {k: round(v / wall, 2) for k, v in others.most_common(3) if v > 0} if wall else {},
            "cores": os.cpu_count(),
        }
