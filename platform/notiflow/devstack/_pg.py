"""pgserver's PostgreSQL binaries: the unprivileged account, initdb, the server's flags, psql.

PostgreSQL refuses to run as root. Like pgserver itself (``PostgresServer.__init__`` creates a
``pgserver`` system user when ``os.geteuid() == 0``), we run initdb and postgres as that unprivileged
account when we are root, after making sure it can reach the binaries and owns the cluster's directory.
As a normal user nothing changes hands.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import subprocess
from pathlib import Path

from notiflow.devstack._proc import DevStackError, package_dir

log = logging.getLogger(__name__)

# The same account pgserver creates, so a machine that ran pgserver before gains no second user.
_SERVER_ACCOUNT = "pgserver"
_FALLBACK_ACCOUNT = "nobody"

# Dev-box sizing: enough connections for several gateways and workers with their pools; fsync stays on
# because the crash tests rely on committed rows surviving a SIGKILL of the server.
SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "shared_buffers": "128MB",
    "max_connections": "200",
    "fsync": "on",
    "synchronous_commit": "on",
    "timezone": "UTC",
}

_install_readable = False


def _pgserver_dir() -> Path:
    # Located, not imported: importing pgserver starts its own machinery (lock files, runtime dirs).
    return package_dir("pgserver")


def bin_path(name: str) -> Path:
    path = _pgserver_dir() / "pginstall" / "bin" / name
    if not path.is_file():
        raise DevStackError(f"pgserver ships no {name} at {path}; reinstall pgserver")
    return path


def server_account() -> pwd.struct_passwd | None:
    """The account postgres runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SERVER_ACCOUNT)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _SERVER_ACCOUNT],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return pwd.getpwnam(_SERVER_ACCOUNT)
    except (OSError, subprocess.SubprocessError, KeyError):
        # No useradd (a minimal image): any unprivileged account that owns the data dir will do.
        return pwd.getpwnam(_FALLBACK_ACCOUNT)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _make_install_readable() -> None:
    """Let other users read the install tree and run its binaries (a root-owned venv may not)."""
    global _install_readable
    if _install_readable:
        return
    read_dir = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    top = _pgserver_dir()
    trees = [top / "pginstall", top.parent / "pgserver.libs"]
    for tree in (t for t in trees if t.exists()):
        _allow_traversal(tree)
        for dirpath, _dirs, files in os.walk(tree):
            _add_mode(Path(dirpath), read_dir)
            for name in files:
                file = Path(dirpath) / name
                if file.is_symlink():
                    continue
                executable = file.stat().st_mode & stat.S_IXUSR
                _add_mode(file, stat.S_IRGRP | stat.S_IROTH | (read_dir if executable else 0))
    _install_readable = True


def _allow_traversal(path: Path) -> None:
    for parent in path.resolve().parents:
        _add_mode(parent, stat.S_IXGRP | stat.S_IXOTH)


def cluster_parent(wanted: Path | None, account: pwd.struct_passwd | None) -> Path | None:
    """Where the cluster's temp dir goes: ``wanted``, unless the server account could not reach it.

    Opening up somebody's home directory to other users just to hold a throwaway cluster is not worth
    it, so then the system temp dir is used instead (the server's log moves with it).
    """
    if wanted is None or account is None:
        return wanted
    wanted = wanted.resolve()
    blocked = [p for p in (wanted, *wanted.parents) if p.exists() and not p.stat().st_mode & stat.S_IXOTH]
    if not blocked:
        return wanted
    log.info("%s is closed to %s; the embedded cluster goes to the temp dir", blocked[-1], account.pw_name)
    return None


def prepare_root(root: Path, account: pwd.struct_passwd | None) -> None:
    """Hand the cluster's directory to ``account`` and let it reach that directory and the binaries."""
    if account is None:
        return
    _make_install_readable()
    _allow_traversal(root)
    os.chown(root, account.pw_uid, account.pw_gid)
    root.chmod(0o700)


def server_env() -> dict[str, str]:
    # Inherited PG* variables (PGDATA, PGPORT...) would silently change what the binaries do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def initdb(data_dir: Path, account: pwd.struct_passwd | None, *, log_path: Path) -> None:
    argv = [
        str(bin_path("initdb")),
        "-D", str(data_dir),
        "-U", "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        # Skips only initdb's own fsync of the fresh cluster: it is throwaway, and the server keeps fsync on.
        "--no-sync",
        "--no-instructions",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(),
            cwd=data_dir.parent,
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=[] if account is not None else None,
            timeout=120,
            check=False,
        )
    if done.returncode != 0:
        raise DevStackError(f"initdb failed ({done.returncode}); log {log_path}:\n" + log_path.read_text())


def postgres_argv(data_dir: Path, port: int) -> list[str]:
    argv = [str(bin_path("postgres")), "-D", str(data_dir), "-c", f"port={port}"]
    for key, value in SERVER_SETTINGS.items():
        argv += ["-c", f"{key}={value}"]
    return argv


def psql(url: str, sql: str, *, timeout_s: float = 60.0) -> str:
    """Run ``sql`` with pgserver's psql against any server; returns the unaligned, tuples-only output."""
    env = server_env()
    env["PGCONNECT_TIMEOUT"] = "10"
    argv = [str(bin_path("psql")), url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]
    try:
        done = subprocess.run(argv, capture_output=True, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DevStackError(f"psql timed out after {timeout_s}s running {sql!r}") from exc
    if done.returncode != 0:
        raise DevStackError(f"psql failed running {sql!r}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()
