"""The gateway's open-files limit against the sockets it allows.

Each WebSocket is a file descriptor, and so is every connection to Redis and PostgreSQL, the listening
socket, the log and Python's own files. A process whose soft ``RLIMIT_NOFILE`` is below what
``NOTIFLOW_WS_MAX_SOCKETS`` allows fails its next ``accept`` with EMFILE long before the socket limit says
1013: a common default is 1024, against 20,000 sockets. The gateway logs its limit at start, and warns when
it is too low (Docker: ``ulimits: nofile``; systemd: ``LimitNOFILE``; a shell: ``ulimit -n``).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: Descriptors a gateway process holds besides its sockets: the stores' pools (NOTIFLOW_PG_POOL_MAX,
#: NOTIFLOW_REDIS_POOL_MAX), the listening socket, logs, the interpreter's own files, with room to spare.
FD_RESERVE = 256


def open_files_limit() -> int:
    """This process's soft limit on open files (``RLIM_INFINITY`` as it is: larger than any need)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 2**63 - 1


def check_open_files(soft_limit: int, ws_max_sockets: int, *, reserve: int = FD_RESERVE) -> bool:
    """Log ``soft_limit`` and whether it covers ``ws_max_sockets`` sockets plus ``reserve``; a warning when it
    does not. Returns whether it does."""
    needed = ws_max_sockets + reserve
    figures = {"nofile": soft_limit, "ws_max_sockets": ws_max_sockets, "needed": needed}
    if soft_limit < needed:
        log.warning(
            "open-files limit is below what NOTIFLOW_WS_MAX_SOCKETS allows: sockets past it fail with EMFILE; "
            "raise nofile (ulimit -n, Docker ulimits) or lower NOTIFLOW_WS_MAX_SOCKETS", extra=figures,
        )
        return False
    log.info("open-files limit", extra=figures)
    return True
