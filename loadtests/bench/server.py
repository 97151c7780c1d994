"""What the server side says about a run: py-spy profiles, delivery states in PostgreSQL, and the warnings
the stack's processes logged."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from notiflow.devstack import DevStack, psql


def start_profilers(stack: DevStack, seconds: float, out_dir: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy record on every gateway and stream worker during the load window (if py-spy is installed)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found: no profiles", file=sys.stderr)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in stack.process_names:
        pid = stack.supervisor.pid(name)
        if pid is None or name.startswith("retry"):
            continue
        argv = [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "67",
                "-f", "raw", "-o", str(out_dir / f"{name}.txt")]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def db_status_counts(database_url: str) -> dict[str, int]:
    try:
        out = psql(database_url, "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY 1", timeout_s=30)
    except Exception as exc:  # noqa: BLE001 - a figure for the report, not a check
        return {"error": str(exc)[:200]}  # type: ignore[dict-item]
    return {s: int(n) for s, n in (line.split("|") for line in out.splitlines() if "|" in line)}


def count_status(database_url: str, status: str) -> int | None:
    try:
        return int(psql(database_url, f"SELECT count(*) FROM deliveries WHERE status = '{status}'", timeout_s=30))
    except Exception:  # noqa: BLE001 - a figure for the report, not a check
        return None


async def settled_dispatched(database_url: str, timeout_s: float, quiet_s: float = 3.0) -> int | None:
    """Deliveries still `dispatched` once socket acks stop landing: every frame was acked, so each one left
    is an acknowledgement the server dropped. Waits (bounded) until the count has not moved for ``quiet_s``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout_s
    last = await loop.run_in_executor(None, count_status, database_url, "dispatched")
    still_since = time.monotonic()
    while last and time.monotonic() < deadline and time.monotonic() - still_since < quiet_s:
        await asyncio.sleep(0.5)
        now = await loop.run_in_executor(None, count_status, database_url, "dispatched")
        if now is None:
            return None
        if now != last:
            last, still_since = now, time.monotonic()
    return last


def server_warnings(log_dir: Path, top: int = 8) -> dict[str, int]:
    """Warnings and errors the stack's processes logged (JSON lines), by process and message."""
    seen: Counter[str] = Counter()
    for path in sorted(log_dir.glob("*.log")):
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            for line in fh:
                if not line.startswith(b"{"):
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if str(rec.get("level", "")).lower() in ("warning", "error", "critical"):
                    # The error's kind (e.g. "postgresql: socket acks: DeadlockDetectedError"), not its detail.
                    error = str(rec.get("error") or "").split("\n")[0]
                    kind = re.match(r"^[^:]*(?::[^:]*)?: \w+", error)
                    why = f" ({kind.group(0) if kind else error[:60]})" if error else ""
                    seen[f"{path.stem}: {rec.get('msg')}{why}"] += 1
    return dict(seen.most_common(top))
