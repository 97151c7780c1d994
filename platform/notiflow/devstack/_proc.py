"""Process plumbing shared by the embedded servers and the supervisor: ports, spawning, stopping."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from notiflow.errors import NotiflowError

_PR_SET_PDEATHSIG = 1
_LOOPBACK = "127.0.0.1"


class DevStackError(NotiflowError):
    """An embedded server or a supervised process failed to start, answer or stop."""


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once here: the child must not dlopen anything between fork and exec.
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def _death_signal_hook(sig: int) -> Callable[[], None] | None:
    """A preexec hook that makes the kernel send ``sig`` to the child when its parent dies.

    This is what keeps a SIGKILLed test run or `notiflow dev` from leaving orphan servers (atexit does
    not run then). Linux ties the death signal to the *thread* that forked, so it is only armed when
    spawning from the main thread: a child started from a short-lived helper thread would otherwise be
    killed the moment that thread ends.
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl = _PRCTL

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return hook


def package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DevStackError(
            f"package {name} is not installed: the embedded stores of `notiflow dev` (and of the tests when no"
            f" NOTIFLOW_TEST_*_URL is set) come with notiflow's `dev` extra: pip install 'notiflow[dev]'"
            f" (in a checkout, `make run` installs it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


#: Linux's default ephemeral range (net.ipv4.ip_local_port_range), for a system that does not say its own.
_EPHEMERAL_DEFAULT = (32768, 60999)
#: Ports below this are left to system services.
_LOWEST = 10000


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of ephemeral ports: where the local port of every outgoing connection, and of a bind to
    port 0, is taken from."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT
    return low, high


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_port_range(1)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_LOOPBACK, port))
        except OSError:
            return False
        return True


def free_port_range(count: int, *, attempts: int = 200) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1 (gateways take consecutive ports).

    Chosen at random outside the kernel's ephemeral range. A port from that range (what a bind to port 0 gives)
    could be taken, between this check and the server's own bind a second or two later, as the local port of any
    outgoing connection on the machine, and the server then failed with "address already in use" (it happened to
    a conformance stack's second gateway)."""
    low, high = ephemeral_ports()
    spans = [(_LOWEST, low - count), (high + 1, 65536 - count)]
    spans = [(a, b) for a, b in spans if a <= b]
    if not spans:
        raise DevStackError(f"no {count} consecutive ports outside the ephemeral range {low}-{high}")
    for _ in range(attempts):
        first = random.randint(*max(spans, key=lambda span: span[1] - span[0]))
        if all(port_is_free(first + i) for i in range(count)):
            return first
    raise DevStackError(f"found no {count} consecutive free ports on {_LOOPBACK}")


def port_accepts(port: int, *, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    uid: int | None = None,
    gid: int | None = None,
    death_signal: int = signal.SIGKILL,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log_path``.

    Its own session keeps a terminal's Ctrl-C away from the children: only the parent gets it and
    decides the shutdown order. A log file instead of a pipe means a chatty child can never block on a
    full pipe that nobody reads.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
            preexec_fn=_death_signal_hook(death_signal),
        )


def signal_process(proc: subprocess.Popen[bytes], sig: int, *, group: bool = True) -> None:
    """Send ``sig`` to ``proc`` (and by default to its whole process group: helpers it forked too)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)


def stop_process(
    proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace_s: float = 10.0, group: bool = True
) -> bool:
    """Send ``sig``, wait up to ``grace_s``, then SIGKILL the group. True if SIGKILL was needed."""
    signal_process(proc, sig, group=group)
    try:
        proc.wait(timeout=grace_s)
        return False
    except subprocess.TimeoutExpired:
        pass
    signal_process(proc, signal.SIGKILL, group=True)
    # SIGKILL cannot be ignored; a process stuck in uninterruptible I/O is the only thing that waits here.
    proc.wait(timeout=30)
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tail(path: Path, *, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, for error messages."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])
