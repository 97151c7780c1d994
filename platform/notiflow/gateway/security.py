"""Browser-facing defences of every HTTP answer (issue 25, finding 7): the Host check and the headers.

- **Host**: a request (or socket handshake) whose Host is not one of ``NOTIFLOW_ALLOWED_HOSTS`` is refused,
  so that a page on another site cannot reach a gateway through a name it re-points at 127.0.0.1 (DNS
  rebinding). The probes (/healthz, /readyz, /metrics) carry no user data and answer any Host: orchestrators
  and scrapers address a process by its IP.
- **Headers**: every answer forbids framing (``X-Frame-Options`` and CSP ``frame-ancestors``), MIME sniffing
  and referrers (an address may carry a dashboard key, GET /dashboard?token=). The CSP of JSON answers
  allows nothing; the dashboard's allows its own inline script by hash, its styles, and requests to itself;
  /docs (off unless NOTIFLOW_API_DOCS) allows the Swagger UI it loads from the CDN.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
DOCS_CDN = "https://cdn.jsdelivr.net"

_API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_DOCS_CSP = (
    f"default-src 'none'; script-src {DOCS_CDN} 'unsafe-inline'; style-src {DOCS_CDN} 'unsafe-inline'; "
    "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_COMMON = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def host_name(host: str) -> str:
    """The name of a Host header, without its port, lower case: ``[::1]:8000`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") > 1:  # a bare IPv6 address (as configured): no port to take off
        return host
    name, _, port = host.rpartition(":")
    return name.rstrip(".") if name and port.isdigit() else host.rstrip(".")


def host_allowed(host: str | None, names: frozenset[str]) -> bool:
    """Whether a request's Host header names one of ``names`` (served_hosts: no ports; ``*`` any)."""
    return "*" in names or (host is not None and host_name(host) in names)


def served_hosts(allowed: list[str], listen_host: str) -> frozenset[str]:
    """The names a gateway answers to: ``allowed``, and the address it listens on when that is one address
    (NOTIFLOW_HOST=10.0.0.5 is reached as 10.0.0.5; 0.0.0.0 and :: are every address, so not a name)."""
    names = {host_name(a) for a in allowed}
    if listen_host not in ("", "0.0.0.0", "::"):
        names.add(host_name(listen_host))
    return frozenset(names)


def header_host(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The Host header of an ASGI scope's headers (latin-1, as HTTP/1.1 carries it), or None."""
    for name, value in headers:
        if name == b"host":
            return value.decode("latin-1")
    return None


def page_csp(html: str) -> str:
    """The CSP of a self-contained page: its inline scripts by SHA-256, inline styles, fetches to itself."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in _SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' "
        "data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def security_headers(path: str, dashboard_csp: str) -> list[tuple[bytes, bytes]]:
    """The headers every answer to ``path`` carries."""
    if path == "/dashboard":
        csp = dashboard_csp
    elif path == "/docs" or path.startswith("/docs/"):
        csp = _DOCS_CSP
    else:
        csp = _API_CSP
    return [*_COMMON, (b"content-security-policy", csp.encode())]
