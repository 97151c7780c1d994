"""CPU of one PostgreSQL backend, read from /proc (PostgreSQL must run on this machine): what the measuring
scripts (pg_floor.py, collapse_floor.py, ...) report per delivery, statement or key."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def backend_cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


class Meter:
    """CPU and wall time of one backend over the phases it runs; figures per delivery."""

    def __init__(self, conn: Any, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.results: dict[str, dict[str, float]] = {}

    async def phase(self, name: str, count: int, run: Callable[[], Awaitable[None]]) -> None:
        cpu0, wall0 = backend_cpu_s(self.pid), time.perf_counter()
        await run()
        cpu, wall = backend_cpu_s(self.pid) - cpu0, time.perf_counter() - wall0
        load = os.getloadavg()[0]
        self.results[name] = {"us_cpu": round(cpu / count * 1e6, 2), "us_wall": round(wall / count * 1e6, 2),
                              "deliveries": count, "load1": round(load, 2)}
        print(f"{name:<28} {cpu / count * 1e6:7.2f} µs CPU  {wall / count * 1e6:7.2f} µs wall per delivery"
              f"  ({count} deliveries, load {load:.2f})", flush=True)
