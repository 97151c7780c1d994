"""The private-address filter on the IPv6 forms that carry an IPv4 address, and the special-purpose blocks
that Python's own tables (which differ between versions) let through (issue 25, finding 9).

Nothing here sends a packet: the filter is called on literal addresses, and ``resolve`` parses a literal
without asking any resolver."""

from __future__ import annotations

import pytest

from notiflow.errors import DownstreamRejected
from notiflow.webhook import address_problem, resolve

pytestmark = pytest.mark.timeout(30)

#: Each form with a loopback, a private or a link-local IPv4 address inside, and what the filter names.
EMBEDDED_PRIVATE = [
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 well-known prefix (RFC 6052) + 127.0.0.1
    ("64:ff9b::a00:1", "private"),  # + 10.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local"),  # + 169.254.169.254, the cloud metadata address
    ("64:ff9b::127.0.0.1", "loopback"),  # the same, written with a dotted tail
    ("2002:7f00:1::", "loopback"),  # 6to4 (2002::/16) of 127.0.0.1
    ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
    ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
    ("::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
    ("::7f00:1", "loopback"),  # the same, in hex
    ("::10.1.2.3", "private"),
    ("::169.254.169.254", "link-local"),
    ("::ffff:0:7f00:1", "loopback"),  # IPv4-translated (::ffff:0:0:0/96)
    ("::ffff:0:127.0.0.1", "loopback"),
    ("::ffff:0:c0a8:101", "private"),
    ("::ffff:0:a9fe:a9fe", "link-local"),
]

#: Blocks refused as a whole: no webhook downstream lives in them, whatever their contents.
RESERVED = [
    "192.0.0.8",  # the IPv4 dummy address (RFC 7600)
    "192.0.0.9", "192.0.0.200",  # the rest of 192.0.0.0/24, IETF protocol assignments
    "64:ff9b:1::7f00:1", "64:ff9b:1::808:808", "64:ff9b:1:ffff::1",  # local-use NAT64 (RFC 8215), any tail
    "::8.8.8.8",  # IPv4-compatible, even of a public address: deprecated, not routed
]

#: What must still pass: public IPv4 reached through NAT64 or 6to4, and ordinary public addresses.
PUBLIC = ["64:ff9b::808:808", "64:ff9b::8.8.8.8", "2002:808:808::1", "2606:4700:4700::1111", "8.8.8.8"]


@pytest.mark.parametrize(("address", "kind"), EMBEDDED_PRIVATE)
def test_an_ipv6_form_embedding_a_non_public_ipv4_address_is_refused(address: str, kind: str) -> None:
    problem = address_problem(address)
    assert problem is not None and kind in problem, (address, problem)


@pytest.mark.parametrize("address", RESERVED)
def test_special_purpose_blocks_are_refused(address: str) -> None:
    problem = address_problem(address)
    assert problem is not None and "private or reserved" in problem, (address, problem)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_ipv4_behind_nat64_or_6to4_still_passes(address: str) -> None:
    assert address_problem(address) is None


@pytest.mark.parametrize("address", [a for a, _ in EMBEDDED_PRIVATE] + RESERVED)
async def test_resolution_refuses_every_form_before_any_connection(address: str) -> None:
    # A literal host is parsed, not looked up: the refusal comes before any socket is opened.
    with pytest.raises(DownstreamRejected, match="NOTIFLOW_WEBHOOK_ALLOW_PRIVATE is off"):
        await resolve(address, 443, allow_private=False)
    assert await resolve(address, 443, allow_private=True) == address
