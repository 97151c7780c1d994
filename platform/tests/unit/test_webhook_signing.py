"""The webhook's pure parts: the Standard Webhooks signature, the allowed-hosts rule (and that the HTTP
client would reach the same host the rule checked), and Retry-After parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notiflow.errors import ApiError
from notiflow.webhook import check_webhook_url, retry_after_s, sign

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


@given(
    secret=st.text(min_size=1, max_size=64),
    msg_id=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=80),
    timestamp=st.integers(min_value=0, max_value=2**40),
    body=st.binary(max_size=512),
)
def test_sign_is_the_standard_webhooks_scheme_keyed_by_the_secret_bytes(
    secret: str, msg_id: str, timestamp: int, body: bytes
) -> None:
    # NOTIFLOW_WEBHOOK_SECRET is used as its UTF-8 bytes; a receiver using a Standard Webhooks library
    # configures "whsec_" + base64(secret bytes).
    assert sign(secret, msg_id, timestamp, body) == reference_signature(secret.encode(), msg_id, timestamp, body)


def test_the_signature_covers_id_timestamp_body_and_secret() -> None:
    base = sign("s3cret", "n1:alice", 1_700_000_000, b'{"a":1}')
    assert base.startswith("v1,") and len(base64.b64decode(base[3:])) == 32
    assert sign("s3cret", "n1:bob", 1_700_000_000, b'{"a":1}') != base
    assert sign("s3cret", "n1:alice", 1_700_000_001, b'{"a":1}') != base
    assert sign("s3cret", "n1:alice", 1_700_000_000, b'{"a":2}') != base
    assert sign("other", "n1:alice", 1_700_000_000, b'{"a":1}') != base


# --- allowed hosts ---------------------------------------------------------------------------

ALLOWED = ["hooks.example", "127.0.0.1:9000"]


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example/n",
        "https://HOOKS.Example/n?x=1",  # hosts compare case-insensitively
        "https://hooks.example:8443/n",  # a bare host allows any port
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
    host, port = sent.host.lower(), sent.port
    assert host in ALLOWED or f"{host}:{port}" in ALLOWED, (url, host, port)


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
