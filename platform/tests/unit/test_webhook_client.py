"""The webhook client's request: sent to the address that was checked (Host and TLS name kept), signed with
every secret, one deadline for the whole call, private addresses refused before anything is sent.

The HTTP side is httpx's MockTransport (no sockets); name resolution is the machine's own (``localhost``
and literal addresses only, so no DNS query leaves the machine)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook

from notiflow.config import Settings
from notiflow.errors import DownstreamError, DownstreamRejected
from notiflow.models import DeliveryWork
from notiflow.webhook import WebhookClient

pytestmark = pytest.mark.timeout(30)

OLD, NEW = ("whsec_" + base64.b64encode(k * 32).decode() for k in (b"o", b"n"))


def _work(url: str) -> DeliveryWork:
    return DeliveryWork(
        notification_id=uuid.uuid4(), user_id="alice", seq=1, status="pending", webhook_status="pending",
        attempts=0, webhook_attempts=0, event="e", payload_json='{"a":1}', created_at=datetime.now(UTC),
        expired=False, webhook_url=url,
    )  # fmt: skip


class _Body(httpx.AsyncByteStream):
    """A response body streamed as a network transport streams it (``content=`` would be pre-read)."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), 16 * 1024):
            yield self.data[i : i + 16 * 1024]


def _client(handler: httpx.MockTransport, **overrides: object) -> WebhookClient:
    values: dict[str, object] = {
        "webhook_allowed_hosts": ["localhost:8443", "127.0.0.1:9"], "webhook_secret": SecretStr(f"{OLD},{NEW}"),
        "webhook_allow_private": True, **overrides,
    }  # fmt: skip
    settings = Settings(**values)  # type: ignore[arg-type]
    return WebhookClient(settings, transport=handler)  # the production client, without sockets


async def test_the_request_goes_to_the_checked_address_with_host_and_tls_name_kept() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=_Body())

    client = _client(httpx.MockTransport(answer))
    work = _work("https://localhost:8443/hook?x=1")
    await client.send(work)
    (request,) = seen
    assert request.url.host in ("127.0.0.1", "::1") and request.url.port == 8443, request.url
    assert request.url.raw_path == b"/hook?x=1"
    assert request.headers["host"] == "localhost:8443"
    assert request.extensions["sni_hostname"] == "localhost"
    # Signed with both secrets: a receiver holding either one verifies.
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (OLD, NEW):
        Webhook(secret).verify(request.content, dict(request.headers), json_parse=False)


async def test_a_private_address_is_refused_before_anything_is_sent() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, stream=_Body()))
    client = _client(transport, webhook_allow_private=False)
    with pytest.raises(DownstreamRejected, match="loopback"):
        await client.send(_work("https://localhost:8443/hook"))
    assert seen == []


async def test_one_deadline_covers_the_whole_call() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)  # each phase might stay under a per-phase timeout; the whole call may not
        return httpx.Response(200, stream=_Body())

    client = _client(httpx.MockTransport(slow), webhook_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(DownstreamError, match="deadline"):
        await client.send(_work("http://127.0.0.1:9/hook"))
    assert time.monotonic() - started < 2


async def test_an_error_answer_is_classified_and_its_body_read_only_in_part() -> None:
    huge = b"e" * (1024 * 1024)
    busy = {"retry-after": "7"}
    client = _client(httpx.MockTransport(lambda r: httpx.Response(503, stream=_Body(huge), headers=busy)))
    with pytest.raises(DownstreamError) as caught:
        await client.send(_work("http://127.0.0.1:9/hook"))
    assert caught.value.retry_after_s == 7 and len(str(caught.value)) < 300
    client = _client(httpx.MockTransport(lambda r: httpx.Response(400, stream=_Body(b"no"))))
    with pytest.raises(DownstreamRejected, match="HTTP 400: no"):
        await client.send(_work("http://127.0.0.1:9/hook"))
