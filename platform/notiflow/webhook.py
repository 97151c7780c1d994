"""The webhook downstream: signed HTTP POSTs to allowed hosts at public addresses, with the outcome
classified as transient or permanent.

Three rules keep the platform from being a way into its own network (SSRF): the URL's host must be
allowed by configuration (a host without a port allows only the scheme's default port); the address it
resolves to at send time must be public unless ``WEBHOOK_ALLOW_PRIVATE``; and the request goes to that
checked address (the ``Host`` header and TLS name stay the URL's), so a DNS answer that changes between
the check and the connect cannot redirect it. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit

import httpx
from standardwebhooks import Webhook

from notiflow.errors import ApiError, DownstreamError, DownstreamRejected
from notiflow.models import DeliveryWork
from notiflow.roles import WebhookSettings

#: The most of a downstream's response body that is read (the rest is dropped with the connection).
MAX_RESPONSE_BYTES = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_webhook_url(url: str, allowed_hosts: list[str], *, field: str = "webhook_url") -> None:
    """Only hosts named in configuration: ``host`` allows the scheme's default port, ``host:port`` that port.
    ``field``: the request field that names the URL (``webhook_url``, or ``status_url`` for receipts, whose
    error codes are ``invalid_status_url`` and ``status_host_not_allowed``)."""
    what = field.removesuffix("_url")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on an out-of-range port
        httpx.URL(url)  # what the client would refuse to send (control characters) is refused here
    except (ValueError, httpx.InvalidURL) as exc:
        raise ApiError(422, f"invalid_{field}", f"{field} is not a valid URL: {exc}") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ApiError(422, f"invalid_{field}", f"{field} must be an absolute http(s) URL")
    host = parts.hostname.lower()
    effective = port if port is not None else _DEFAULT_PORTS[parts.scheme]
    allowed = {h.lower() for h in allowed_hosts}
    if f"{host}:{effective}" in allowed:
        return
    if host in allowed and effective == _DEFAULT_PORTS[parts.scheme]:
        return
    netloc = f"{host}:{port}" if port is not None else host
    raise ApiError(
        422, f"{what}_host_not_allowed",
        f"{what} host {netloc!r} is not in NOTIFLOW_WEBHOOK_ALLOWED_HOSTS (a host without a port allows "
        "only the scheme's default port)",
    )


def host_of(url: str) -> str:
    """The downstream a URL names, as retry budgets count it: ``host`` or ``host:port``, lower-case."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


#: Special-purpose blocks refused whatever Python's tables say (they differ between Python versions): no
#: webhook downstream lives in them.
_REFUSED_NETWORKS = (
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments (192.0.0.8 the dummy address, DS-Lite)
    ipaddress.ip_network("::/96"),  # IPv4-compatible IPv6 (deprecated, RFC 4291), :: and ::1 included
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
)
#: IPv6 forms whose last 32 bits are an IPv4 address that the packets reach.
_LOW_32_EMBEDS = (
    ipaddress.ip_network("64:ff9b::/96"),  # well-known NAT64 prefix (RFC 6052)
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated (RFC 2765)
    ipaddress.ip_network("::/96"),  # IPv4-compatible
)
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(ip: _IP) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: mapped, translated, compatible, NAT64, 6to4, Teredo."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())) if a is not None]
    if any(ip in net for net in _LOW_32_EMBEDS):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF))
    return found


def _reserved(ip: _IP) -> bool:
    return not ip.is_global or ip.is_multicast or any(ip in net for net in _REFUSED_NETWORKS)


def address_problem(address: str) -> str | None:
    """Why a resolved address may not be called without ``WEBHOOK_ALLOW_PRIVATE``, or None if it is public.
    An IPv6 address that embeds an IPv4 address (mapped, translated, compatible, NAT64, 6to4, Teredo) must
    pass the check with both."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    candidates: list[_IP] = [ip, *_embedded_ipv4(ip)]
    if any(c.is_loopback for c in candidates):
        return f"{address} is a loopback address"
    if any(c.is_link_local for c in candidates):
        return f"{address} is a link-local address"
    if any(_reserved(c) for c in candidates):
        return f"{address} is a private or reserved address"
    return None


async def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """The address to call for ``host``: every address it resolves to must be public (or private ones
    allowed); raises DownstreamRejected (permanent) when one is not, DownstreamError when DNS fails."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise DownstreamError(f"cannot resolve {host!r}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    else:
        addresses = [host]  # a literal address: no resolver thread on the way
    if not addresses:
        raise DownstreamError(f"{host!r} resolved to no address")
    if not allow_private:
        for address in addresses:
            if problem := address_problem(address):
                raise DownstreamRejected(
                    f"webhook host {host!r} resolves to {problem} (NOTIFLOW_WEBHOOK_ALLOW_PRIVATE is off)"
                )
    return addresses[0]


#: What a webhook-id keeps as it is: visible ASCII but ``%``, which escapes everything else (UTF-8 bytes).
_ID_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def webhook_id(work: DeliveryWork) -> str:
    """Standard Webhooks ``webhook-id`` of a delivery: ``<notification id>:<user id>``, the user id
    percent-encoded outside visible ASCII and for ``%`` (``josé`` is ``jos%C3%A9``). Always a valid header
    value, the same for every attempt of the delivery, and never the same for two deliveries."""
    return f"{work.notification_id}:{quote(work.user_id, safe=_ID_SAFE)}"


def signature_header(signers: list[Webhook], msg_id: str, timestamp_s: int, body: bytes) -> str:
    """Standard Webhooks ``webhook-signature``: one ``v1,<base64>`` per secret, space-separated, so a
    receiver holding either the old or the new secret verifies during a rotation."""
    when = datetime.fromtimestamp(timestamp_s, UTC)
    text = body.decode()
    return " ".join(s.sign(msg_id, when, text) for s in signers)


def retry_after_s(value: str | None) -> float | None:
    """Seconds named by a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf" or "1e999" parse as floats but name no time: ignored, like any other nonsense.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class WebhookClient:
    """One pooled HTTP client per worker process."""

    def __init__(self, settings: WebhookSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``transport``: httpx's transport to send through (its default, sockets, unless given one)."""
        self._s = settings
        self._signers = [Webhook(secret) for secret in settings.webhook_secrets]
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.webhook_timeout_s),  # per phase; the whole call has its deadline
            follow_redirects=False,  # a redirect could lead outside the allowed hosts
            limits=httpx.Limits(max_connections=settings.webhook_concurrency),
            trust_env=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, work: DeliveryWork) -> None:
        """POST the delivery; returns on 2xx, raises DownstreamError (retry) or DownstreamRejected (DLQ)."""
        if not work.webhook_url:
            raise DownstreamRejected("notification has no webhook_url")
        await self.post(work.webhook_url, webhook_id(work), work.webhook_body())

    async def post(self, url: str, msg_id: str, body: bytes, *, field: str = "webhook_url") -> None:
        """POST ``body`` signed as message ``msg_id`` to ``url`` (checked against the allowed hosts again, as
        ``field``); returns on 2xx, raises DownstreamError (retry) or DownstreamRejected (give up)."""
        try:
            check_webhook_url(url, self._s.webhook_allowed_hosts, field=field)
        except ApiError as exc:
            raise DownstreamRejected(f"{field} host no longer allowed: {exc}") from exc
        if not self._signers:  # Settings refuse allowed hosts without a secret; never send unsigned
            raise DownstreamError("no NOTIFLOW_WEBHOOK_SECRET on this worker: not sending unsigned")
        deadline_s = self._s.webhook_timeout_s
        try:
            async with asyncio.timeout(deadline_s):
                status, head, retry_after = await self._post(httpx.URL(url), msg_id, body)
        except TimeoutError as exc:
            raise DownstreamError(f"timeout: no answer within the {deadline_s}s deadline") from exc
        except httpx.HTTPError as exc:
            raise DownstreamError(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return
        detail = f"HTTP {status}: {head[:200].decode('utf-8', 'replace')}"
        if status == 429 or status >= 500:
            raise DownstreamError(detail, retry_after_s=retry_after_s(retry_after))
        raise DownstreamRejected(detail)

    async def _post(self, url: httpx.URL, msg_id: str, body: bytes) -> tuple[int, bytes, str | None]:
        """Resolve, check and call; the status, at most MAX_RESPONSE_BYTES of the body, and Retry-After."""
        host = url.host
        port = url.port or _DEFAULT_PORTS[url.scheme]
        address = await resolve(host, port, allow_private=self._s.webhook_allow_private)
        now_s = int(time.time())
        headers = {
            "host": url.netloc.decode("ascii"),
            "content-type": "application/json",
            "accept-encoding": "identity",  # the body is read raw and bounded: no decompression bombs
            "webhook-id": msg_id,
            "webhook-timestamp": str(now_s),
            "webhook-signature": signature_header(self._signers, msg_id, now_s, body),
            "user-agent": "notiflow-webhook/1",
        }
        pinned = url.copy_with(host=address)
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        request = self._http.build_request("POST", pinned, content=body, headers=headers, extensions=extensions)
        response = await self._http.send(request, stream=True)
        try:
            head = bytearray()
            async for chunk in response.aiter_raw():
                head += chunk
                if len(head) >= MAX_RESPONSE_BYTES:
                    break
            return response.status_code, bytes(head[:MAX_RESPONSE_BYTES]), response.headers.get("retry-after")
        finally:
            await response.aclose()
