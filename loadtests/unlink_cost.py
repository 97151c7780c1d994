"""What freeing a file costs the kernel, without PostgreSQL: a file of ``--mib`` MiB written in 8 KiB ``pwrite``s
(as PostgreSQL extends a relation), then ``ftruncate(fd, 0)`` (what PostgreSQL does to each segment of a dropped
relation) or ``close`` + ``unlink``, with its pages dirty in the page cache, clean in it (fsync), or not cached
(fsync + ``POSIX_FADV_DONTNEED``). Prints each call's wall time and the process's system CPU time during it.

    python loadtests/unlink_cost.py --dir /var/lib/postgresql/tmp --mib 1024 --repeat 2   # on the data's filesystem
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path


def make(path: Path, mib: int) -> int:
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    block = os.urandom(8192)
    for offset in range(0, mib << 20, 8192):
        os.pwrite(fd, block, offset)
    return fd


def once(directory: Path, mib: int, state: str, call: str) -> tuple[float, float]:
    """(wall ms, system CPU ms) of freeing a file in ``state`` with ``call``."""
    path = directory / f"unlink_cost_{state}_{call}"
    fd = make(path, mib)
    if state != "dirty":
        os.fsync(fd)
    if state == "cold":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if call == "unlink":
        os.close(fd)
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    started = time.perf_counter()
    if call == "ftruncate":
        os.ftruncate(fd, 0)
    else:
        path.unlink()
    wall = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_stime - cpu
    if call == "ftruncate":
        os.close(fd)
        path.unlink()
    os.sync()
    return 1000 * wall, 1000 * cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, required=True, help="a directory on the filesystem to measure")
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    for _ in range(args.repeat):
        for state in ("dirty", "clean", "cold"):
            for call in ("ftruncate", "unlink"):
                wall, cpu = once(args.dir, args.mib, state, call)
                print(f"{state:5} {call:9} {args.mib} MiB: {wall:7.1f} ms, system CPU {cpu:6.1f} ms", flush=True)
                time.sleep(1)
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
