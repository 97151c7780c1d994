"""The webhook's pure parts: the Standard Webhooks signature and its secrets, the allowed-hosts rule (and
that the HTTP client would reach the same host the rule checked), the address rule, and Retry-After."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from notiflow.config import Settings
from notiflow.errors import ApiError, DownstreamError, DownstreamRejected
from notiflow.models import DeliveryWork, user_id_problem
from notiflow.webhook import (
    address_problem,
    check_webhook_url,
    resolve,
    retry_after_s,
    signature_header,
    webhook_id,
)

# --- the signature ---------------------------------------------------------------------------


def reference_signature(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """Standard Webhooks, written from the specification: base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))."""
    signed = msg_id.encode() + b"." + str(timestamp_s).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_the_reference_matches_the_standard_webhooks_test_vector() -> None:
    # From the Standard Webhooks specification's examples (a whsec_ secret is base64 of the key).
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = reference_signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


@given(
    key=st.binary(min_size=24, max_size=64),
    msg_id=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=80),
    timestamp=st.integers(min_value=0, max_value=2**35),  # to the year 3058: a datetime ends at 9999
    body=st.text(max_size=256).map(str.encode),
)
def test_signatures_are_the_standard_webhooks_scheme_keyed_by_the_decoded_secret(
    key: bytes, msg_id: str, timestamp: int, body: bytes
) -> None:
    # A whsec_ secret is base64 of the HMAC key (what the reference library, which signs here, decodes).
    got = signature_header([Webhook(_whsec(key))], msg_id, timestamp, body)
    assert got == reference_signature(key, msg_id, timestamp, body)


@given(user_id=st.text(min_size=1, max_size=64).filter(lambda u: user_id_problem(u) is None))
def test_a_webhook_id_is_a_valid_header_that_names_one_delivery(user_id: str) -> None:
    # Issue 25: the raw user id in the header made httpx raise for "josé", poisoning the whole entry.
    nid = uuid.uuid4()
    work = DeliveryWork(
        notification_id=nid, user_id=user_id, seq=1, status="pending", webhook_status="pending", attempts=0,
        webhook_attempts=0, event="e", payload_json="{}", created_at=datetime.now(UTC), expired=False,
        webhook_url="http://h.example/",
    )  # fmt: skip
    got = webhook_id(work)
    assert got.isascii() and got.isprintable() and " " not in got, got
    httpx.Request("POST", "http://h.example/", headers={"webhook-id": got})  # what raised before
    prefix, _, encoded = got.partition(":")
    assert prefix == str(nid) and unquote(encoded, errors="strict") == user_id  # reversible: never shared
    stamp = int(time.time())
    headers = {"webhook-id": got, "webhook-timestamp": str(stamp),
               "webhook-signature": signature_header([Webhook(_whsec(b"k" * 32))], got, stamp, b"{}")}
    Webhook(_whsec(b"k" * 32)).verify(b"{}", headers, json_parse=False)


def test_every_secret_signs_so_a_receiver_with_either_verifies_during_a_rotation() -> None:
    old, new = _whsec(b"o" * 32), _whsec(b"n" * 32)
    body, now = b'{"a":1}', int(time.time())
    header = signature_header([Webhook(old), Webhook(new)], "m1", now, body)
    assert len(header.split(" ")) == 2
    headers = {"webhook-id": "m1", "webhook-timestamp": str(now), "webhook-signature": header}
    for secret in (old, new):
        Webhook(secret).verify(body, headers, json_parse=False)  # raises if it does not verify
    with pytest.raises(WebhookVerificationError):
        Webhook(_whsec(b"x" * 32)).verify(body, headers, json_parse=False)


def test_the_signature_covers_id_timestamp_body_and_secret() -> None:
    signer, other = [Webhook(_whsec(b"s" * 32))], [Webhook(_whsec(b"t" * 32))]
    base = signature_header(signer, "n1:alice", 1_700_000_000, b'{"a":1}')
    assert base.startswith("v1,") and len(base64.b64decode(base[3:])) == 32
    assert signature_header(signer, "n1:bob", 1_700_000_000, b'{"a":1}') != base
    assert signature_header(signer, "n1:alice", 1_700_000_001, b'{"a":1}') != base
    assert signature_header(signer, "n1:alice", 1_700_000_000, b'{"a":2}') != base
    assert signature_header(other, "n1:alice", 1_700_000_000, b'{"a":1}') != base


# --- the secret setting ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["notiflow-dev-secret", "whsec_", "whsec_not base64!", _whsec(b"short"), f"{_whsec(b'k' * 32)},plain"],
)
def test_a_secret_not_in_whsec_form_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(webhook_secret=value)
    assert value not in str(caught.value)


def test_several_secrets_are_accepted_for_rotation() -> None:
    a, b = _whsec(b"a" * 32), _whsec(b"b" * 24)
    s = Settings(webhook_secret=f" {a} , {b} ")
    assert s.webhook_secrets == [a, b]
    assert a not in repr(s) and a not in str(s.model_dump())  # a SecretStr: never printed


def test_webhooks_allowed_without_a_secret_fail_at_start_up() -> None:
    with pytest.raises(ValidationError, match="NOTIFLOW_WEBHOOK_SECRET"):
        Settings(webhook_allowed_hosts=["hooks.example"], webhook_secret=None)
    assert Settings(webhook_allowed_hosts=[], webhook_secret=None).webhook_secrets == []


# --- allowed hosts ---------------------------------------------------------------------------

ALLOWED = ["hooks.example", "127.0.0.1:9000"]


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example/n",
        "https://HOOKS.Example/n?x=1",  # hosts compare case-insensitively
        "http://hooks.example:80/n",  # a bare host allows the scheme's default port, named or not
        "https://hooks.example:443/n",
        "http://127.0.0.1:9000/hook",
        "http://user:pw@hooks.example/n",
    ],
)
def test_allowed_urls(url: str) -> None:
    check_webhook_url(url, ALLOWED)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://evil.example/n", "webhook_host_not_allowed"),
        ("http://sub.hooks.example/n", "webhook_host_not_allowed"),
        ("http://hooks.example.evil.example/n", "webhook_host_not_allowed"),
        ("http://hooks.example@evil.example/n", "webhook_host_not_allowed"),  # userinfo, not the host
        ("http://evil.example#@hooks.example/", "webhook_host_not_allowed"),
        ("http://evil.example?@hooks.example/", "webhook_host_not_allowed"),
        ("https://hooks.example:8443/n", "webhook_host_not_allowed"),  # a bare host allows no other port
        ("http://hooks.example:443/n", "webhook_host_not_allowed"),  # 443 is not http's default
        ("https://hooks.example:80/n", "webhook_host_not_allowed"),
        ("http://127.0.0.1:9001/hook", "webhook_host_not_allowed"),  # host:port allows that port only
        ("http://127.0.0.1/hook", "webhook_host_not_allowed"),
        ("http://localhost:9000/hook", "webhook_host_not_allowed"),  # names are not resolved
        ("ftp://hooks.example/n", "invalid_webhook_url"),
        ("hooks.example/n", "invalid_webhook_url"),
        ("http:///n", "invalid_webhook_url"),
        ("http://hooks.example:99999/n", "invalid_webhook_url"),
        ("http://[::1/n", "invalid_webhook_url"),
        ("http://hooks.example/a\x01b", "invalid_webhook_url"),
        ("http://hooks.example/a\x7fb", "invalid_webhook_url"),
    ],
)
def test_refused_urls_are_422_with_a_code(url: str, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        check_webhook_url(url, ALLOWED)
    assert (caught.value.status, caught.value.code) == (422, code)


def test_no_allowed_hosts_means_no_webhooks() -> None:
    with pytest.raises(ApiError):
        check_webhook_url("http://hooks.example/n", [])


_URL_BITS = st.sampled_from(
    ["hooks.example", "evil.example", "127.0.0.1", ":9000", ":80", "@", "\\", "#", "?", "/", ".", "%40", "%2f",
     "[", "]", "::1", "user", ":", "a", "\t", " "]
)


@given(scheme=st.sampled_from(["http://", "https://", "HTTP://"]), bits=st.lists(_URL_BITS, max_size=8))
def test_whatever_the_check_allows_the_client_sends_to_an_allowed_host(scheme: str, bits: list[str]) -> None:
    # The check parses with urllib, the client with httpx: a URL the two read differently would let a
    # producer reach a host that was never allowed.
    url = scheme + "".join(bits)
    try:
        check_webhook_url(url, ALLOWED)
    except ApiError:
        return
    sent = httpx.URL(url)
    host, port = sent.host.lower(), sent.port or {"http": 80, "https": 443}[sent.scheme]
    assert (host in ALLOWED and port == {"http": 80, "https": 443}[sent.scheme]) or f"{host}:{port}" in ALLOWED, (
        url, host, port,
    )


# --- resolved addresses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6 is the IPv4 address
        ("169.254.169.254", "link-local"), ("fe80::1%eth0", "link-local"),  # cloud metadata; a zone id
        ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
        ("100.64.0.1", "private"), ("0.0.0.0", "private"), ("224.0.0.1", "private"), ("192.0.2.1", "private"),
    ],
)
def test_non_public_addresses_are_named(address: str, kind: str) -> None:
    problem = address_problem(address)
    assert problem is not None and kind in problem, problem


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(address) is None


async def test_resolution_refuses_private_answers_unless_allowed() -> None:
    with pytest.raises(DownstreamRejected, match="loopback"):
        await resolve("localhost", 80, allow_private=False)
    with pytest.raises(DownstreamRejected, match="private"):
        await resolve("10.1.2.3", 443, allow_private=False)
    assert await resolve("127.0.0.1", 80, allow_private=True) == "127.0.0.1"
    assert await resolve("8.8.8.8", 443, allow_private=False) == "8.8.8.8"  # a literal: no DNS query


async def test_an_unresolvable_host_is_transient() -> None:
    with pytest.raises(DownstreamError):
        await resolve("no-such-host.invalid", 80, allow_private=False)


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),  # in the past: retry now
        ("soon", None),
        ("inf", None),  # parses as a float, names no time
        ("Infinity", None),
        ("1e999", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past
    ],
)
def test_retry_after_values(header: str | None, expected: float | None) -> None:
    assert retry_after_s(header) == expected


def test_retry_after_as_an_http_date_in_the_future() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    got = retry_after_s(format_datetime(when, usegmt=True))
    assert got is not None and 115 <= got <= 121


@given(st.text(max_size=64))
def test_retry_after_never_raises_and_is_none_or_a_finite_non_negative_number(header: str) -> None:
    got = retry_after_s(header)
    assert got is None or (math.isfinite(got) and got >= 0)


@given(st.integers(min_value=-(10**6), max_value=10**9))
def test_retry_after_delta_seconds(seconds: int) -> None:
    assert retry_after_s(str(seconds)) == max(0, seconds)


def test_retry_after_date_relative_to_now() -> None:
    now = time.time()
    got = retry_after_s(format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True))
    assert got is not None and abs(got - 30) < 2
