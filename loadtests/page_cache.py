"""The OS page cache of a relation's files, for benchmarks run as root on the database server's machine.

What ``DROP TABLE`` costs depends on what the kernel must do when PostgreSQL truncates and unlinks the files:
evict cached pages (CPU) and free the blocks (on a filesystem mounted with ``discard``, a synchronous TRIM of
the freed ranges). A partition dropped by retention is a retention period old, mostly not cached; one a benchmark
has just written is all cached. ``evict`` makes it cold; ``cached_mib`` says how much of it is cached.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

# The relation and its indexes (and TOAST table and its index), each one's file path relative to the data directory.
_FILES = """
SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.oid = $1::regclass
UNION ALL
SELECT pg_relation_filepath(i.indexrelid) FROM pg_index i WHERE i.indrelid = $1::regclass
UNION ALL
SELECT pg_relation_filepath(t.oid) FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid
WHERE c.oid = $1::regclass
UNION ALL
SELECT pg_relation_filepath(i.indexrelid) FROM pg_class c JOIN pg_index i ON i.indrelid = c.reltoastrelid
WHERE c.oid = $1::regclass
"""


async def relation_files(conn: Any, names: list[str]) -> list[Path]:
    """Every file of ``names`` (tables: their indexes and TOAST too): all segments of all forks that exist."""
    data = Path(await conn.fetchval("SHOW data_directory"))
    found: list[Path] = []
    for name in names:
        for (rel,) in await conn.fetch(_FILES, name):
            base = data / rel
            for fork in ("", "_fsm", "_vm", "_init"):
                segment = 0
                while (path := Path(f"{base}{fork}" + (f".{segment}" if segment else ""))).exists():
                    found.append(path)
                    segment += 1
    return found


def cached_mib(paths: list[Path]) -> tuple[float, float] | None:
    """(MiB of ``paths`` in the page cache, their size MiB), or None when ``fincore`` (util-linux) cannot tell."""
    if not paths or shutil.which("fincore") is None:
        return None
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", *map(str, paths)],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    resident = size = 0
    for line in out.splitlines():
        res, total = line.split()
        resident, size = resident + int(res), size + int(total)
    return round(resident / 2**20, 1), round(size / 2**20, 1)


def dirty_mib() -> float:
    """The machine's dirty page cache, MiB (/proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Dirty:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


async def evict(conn: Any, paths: list[Path]) -> str:
    """Take ``paths`` out of the page cache: CHECKPOINT (no dirty shared buffer left), sync (no dirty OS page),
    then drop the whole page cache; if that is not allowed, ``POSIX_FADV_DONTNEED`` on each file. How it was done."""
    await conn.execute("CHECKPOINT", timeout=3600)
    return await asyncio.to_thread(_drop_cached, paths)


def _drop_cached(paths: list[Path]) -> str:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "CHECKPOINT, sync, echo 3 > /proc/sys/vm/drop_caches"
    except OSError as exc:
        how = f"drop_caches not writable ({exc.strerror}): CHECKPOINT, sync, posix_fadvise(DONTNEED) of each file"
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return how
