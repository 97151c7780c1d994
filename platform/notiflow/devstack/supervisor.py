"""A small process supervisor: named children, per-process log files, readiness by HTTP, kill and restart.

It installs no signal handlers (signals belong to the CLI); it only sends them. Every child runs in its
own session so that `kill` reaches the helpers it forked too, and a terminal's Ctrl-C reaches only us.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from notiflow.devstack._proc import DevStackError, signal_process, spawn, stop_process, tail

__all__ = ["ProcessSpec", "Supervisor"]

log = logging.getLogger(__name__)

# Signals after which the process is still there: a chaos test freezing a worker is not a death.
_NON_FATAL = frozenset({signal.SIGSTOP, signal.SIGCONT, signal.SIGTSTP, signal.SIGWINCH, signal.SIGUSR1})

# No proxy for readiness probes: an http_proxy in the environment must not intercept 127.0.0.1.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ProcessSpec:
    """What to run. ``env`` is the child's whole environment (None: inherit ours)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    ready_url: str | None = None


@dataclass
class _Child:
    spec: ProcessSpec
    proc: subprocess.Popen[bytes]
    # Set when we ended it ourselves, so that its exit is not reported as a crash.
    stopping: bool = False
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Runs named child processes; their stdout and stderr go to ``<workdir>/logs/<name>.log``."""

    def __init__(self, workdir: Path) -> None:
        self.log_dir = workdir / "logs"
        self._children: dict[str, _Child] = {}

    @property
    def names(self) -> list[str]:
        return list(self._children)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def spec(self, name: str) -> ProcessSpec:
        return self._child(name).spec

    def start(self, spec: ProcessSpec) -> None:
        """Spawn ``spec``; replaces a dead process of the same name, refuses to run two at once."""
        old = self._children.get(spec.name)
        if old is not None and old.proc.poll() is None:
            raise DevStackError(f"process {spec.name} is already running (pid {old.proc.pid})")
        proc = spawn(spec.argv, log_path=self.log_path(spec.name), env=spec.env)
        self._children[spec.name] = _Child(spec, proc)
        log.info("started %s pid %d", spec.name, proc.pid)

    def wait_ready(self, timeout_s: float = 60.0, names: Iterable[str] | None = None) -> None:
        """Poll each ready_url until it answers 200.

        Fails with the process's last output if it exits first or the time runs out.
        """
        deadline = time.monotonic() + timeout_s
        pending = [n for n in (self.names if names is None else names) if self._child(n).spec.ready_url]
        while pending:
            for name in list(pending):
                child = self._child(name)
                if child.proc.poll() is not None:
                    raise DevStackError(
                        f"{name} exited with {child.proc.returncode} before it was ready; "
                        f"last output ({self.log_path(name)}):\n{tail(self.log_path(name))}"
                    )
                url = child.spec.ready_url
                if url is not None and _answers_200(url):
                    pending.remove(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                name = pending[0]
                raise DevStackError(
                    f"{', '.join(pending)} not ready after {timeout_s}s "
                    f"({self._child(name).spec.ready_url}); last output of {name}:\n"
                    f"{tail(self.log_path(name))}"
                )
            time.sleep(0.05)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group; after SIGKILL, returns once the process is reaped."""
        child = self._child(name)
        if sig not in _NON_FATAL:
            child.stopping = True
        signal_process(child.proc, sig)
        if sig == signal.SIGKILL:
            child.proc.wait(timeout=30)

    def terminate(self, name: str, grace_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace_s`` for it to drain and exit, then SIGKILL."""
        child = self._child(name)
        child.stopping = True
        if stop_process(child.proc, sig=signal.SIGTERM, grace_s=grace_s):
            log.warning("%s ignored SIGTERM for %.1fs and was killed", name, grace_s)

    def restart(self, name: str, grace_s: float = 10.0) -> None:
        """Stop it if it still runs, then start the same spec as a new process."""
        self.terminate(name, grace_s)
        self.start(self._child(name).spec)

    def stop_all(self, grace_s: float = 10.0) -> list[str]:
        """SIGTERM every child, give them ``grace_s`` together, SIGKILL the rest.

        Returns the names that had to be killed.
        """
        for child in self._children.values():
            child.stopping = True
            signal_process(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        killed: list[str] = []
        for name, child in self._children.items():
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_process(child.proc, signal.SIGKILL)
                child.proc.wait(timeout=30)
                killed.append(name)
        if killed:
            log.warning("killed after a %.1fs grace: %s", grace_s, ", ".join(killed))
        return killed

    def alive(self, name: str) -> bool:
        return self._child(name).proc.poll() is None

    def pid(self, name: str) -> int | None:
        """The pid while the process runs, else None."""
        child = self._child(name)
        return child.proc.pid if child.proc.poll() is None else None

    def returncode(self, name: str) -> int | None:
        return self._child(name).proc.poll()

    def unexpected_exits(self) -> list[str]:
        """Children that exited although nobody asked them to."""
        return [n for n, c in self._children.items() if not c.stopping and c.proc.poll() is not None]

    def _child(self, name: str) -> _Child:
        try:
            return self._children[name]
        except KeyError:
            raise DevStackError(f"no process named {name!r}; known: {', '.join(self._children)}") from None


def _answers_200(url: str) -> bool:
    try:
        with _HTTP.open(url, timeout=1.0) as response:
            status: int = response.status
            return status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
