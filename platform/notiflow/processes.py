"""One command as several processes: ``notiflow gateway --processes N`` and ``notiflow stream-worker --processes N``.

Python runs one core per process, and the machine has more than one. Each copy is a node of its own
(``NOTIFLOW_NODE_ID`` gets a ``-p<i>`` suffix), so each gateway copy has its own presence entries and routing
channel, and each stream worker copy is its own consumer. Gateway copies bind one port with SO_REUSEPORT:
the kernel spreads new connections over them. Copy ``i`` serves its own metrics (a worker's ``/healthz`` too)
on ``NOTIFLOW_METRICS_PORT + 1 + i``, and the parent serves all of them on ``NOTIFLOW_METRICS_PORT`` (fanin.py):
a scrape of the gateways' shared HTTP port would reach one copy at random.

The parent only supervises: it forwards SIGINT/SIGTERM, restarts a copy that dies (bounded, like
``notiflow dev``), and exits when every copy has. Copies die with the parent (PR_SET_PDEATHSIG), so a
SIGKILL of the parent never leaves orphans serving the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

from notiflow.fanin import copy_port

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_MAX_RESTARTS = 5
_RESTART_WINDOW_S = 60.0


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. Linux only; elsewhere copies outlive a SIGKILLed parent.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def copy_env(node_id: str, index: int, metrics_port: int) -> dict[str, str]:
    """The environment of copy ``index``: its own node id and its own metrics port (fanin.copy_port: the
    parent keeps ``metrics_port`` for all of them; 0 stays 0, off); the copy itself runs single-process."""
    port = copy_port(metrics_port, index)
    return {**os.environ, "NOTIFLOW_NODE_ID": f"{node_id}-p{index}", "NOTIFLOW_METRICS_PORT": str(port)}


def run_copies(argv: list[str], count: int, node_id: str, metrics_port: int, *, poll_s: float = 0.2) -> int:
    """Run ``count`` copies of ``python -m notiflow <argv>`` until a signal; returns the exit code.
    ``argv`` must not name ``--metrics-port``: each copy gets its own through the environment."""
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def spawn(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "notiflow", *argv], env=copy_env(node_id, index, metrics_port),
            preexec_fn=_die_with_parent,
        )

    procs: dict[int, subprocess.Popen[bytes]] = {}
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    restarts: dict[int, list[float]] = {}
    code = 0
    try:
        procs.update({i: spawn(i) for i in range(count)})
        while not stopping:
            time.sleep(poll_s)
            for index, proc in list(procs.items()):
                if proc.poll() is None or stopping:
                    continue
                now = time.monotonic()
                recent = [t for t in restarts.get(index, []) if now - t < _RESTART_WINDOW_S] + [now]
                restarts[index] = recent
                if len(recent) > _MAX_RESTARTS:
                    log.error("process copy keeps exiting; stopping", extra={"copy": index, "code": proc.returncode})
                    code = 1
                    on_signal(signal.SIGTERM, None)
                    break
                log.warning("process copy exited; restarting it", extra={"copy": index, "code": proc.returncode})
                procs[index] = spawn(index)
        for proc in procs.values():
            proc.wait()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code
