"""The webhook downstream: signed HTTP POSTs, with the outcome classified as transient or permanent."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx

from notiflow.config import Settings
from notiflow.errors import ApiError, DownstreamError, DownstreamRejected
from notiflow.models import DeliveryWork


def check_webhook_url(url: str, allowed_hosts: list[str]) -> None:
    """Only hosts named in configuration: the platform must not be a way to reach arbitrary addresses."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on an out-of-range port
        httpx.URL(url)  # what the client would refuse to send (control characters) is refused here
    except (ValueError, httpx.InvalidURL) as exc:
        raise ApiError(422, "invalid_webhook_url", f"webhook_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, "invalid_webhook_url", "webhook_url must be an absolute http(s) URL")
    host = parts.hostname.lower()
    netloc = f"{host}:{port}" if port else host
    allowed = {h.lower() for h in allowed_hosts}
    if host not in allowed and netloc not in allowed:
        raise ApiError(
            422, "webhook_host_not_allowed", f"webhook host {netloc!r} is not in NOTIFLOW_WEBHOOK_ALLOWED_HOSTS"
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


def sign(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """Standard Webhooks signature: ``v1,`` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}"))."""
    mac = hmac.new(secret.encode(), f"{msg_id}.{timestamp_s}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


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

    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.webhook_timeout_s),
            follow_redirects=False,  # a redirect could lead outside the allowed hosts
            limits=httpx.Limits(max_connections=settings.webhook_concurrency),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, work: DeliveryWork) -> None:
        """POST the delivery; returns on 2xx, raises DownstreamError (retry) or DownstreamRejected (DLQ)."""
        url = work.webhook_url
        if not url:
            raise DownstreamRejected("notification has no webhook_url")
        try:
            check_webhook_url(url, self._s.webhook_allowed_hosts)
        except ApiError as exc:
            raise DownstreamRejected(f"webhook host no longer allowed: {exc}") from exc
        body = work.webhook_body()
        msg_id = f"{work.notification_id}:{work.user_id}"
        now_s = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(now_s),
            "webhook-signature": sign(self._s.webhook_secret, msg_id, now_s, body),
            "user-agent": "notiflow-webhook/1",
        }
        try:
            resp = await self._http.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DownstreamError(f"timeout after {self._s.webhook_timeout_s}s") from exc
        except httpx.HTTPError as exc:
            raise DownstreamError(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= resp.status_code < 300:
            return
        detail = f"HTTP {resp.status_code}: {resp.text[:200]}"
        if resp.status_code == 429 or resp.status_code >= 500:
            raise DownstreamError(detail, retry_after_s=retry_after_s(resp.headers.get("retry-after")))
        raise DownstreamRejected(detail)
