"""The Host check's parsing (gateway/security.py): names without ports, IPv6 literals, the listen address."""

from __future__ import annotations

import pytest

from notiflow.gateway.security import host_allowed, host_name, served_hosts

DEFAULT = served_hosts(["localhost", "127.0.0.1", "::1"], "127.0.0.1")


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8000", "127.0.0.1"), ("LocalHost", "localhost"), ("localhost.:80", "localhost"),
    ("[::1]:8000", "::1"), ("[::1]", "::1"), ("::1", "::1"), ("api.example.com", "api.example.com"),
])
def test_host_name_drops_the_port_and_the_case(header: str, name: str) -> None:
    assert host_name(header) == name


def test_only_configured_names_pass() -> None:
    for header in ("127.0.0.1:8000", "localhost:8001", "[::1]:8000"):
        assert host_allowed(header, DEFAULT), header
    for header in (None, "", "evil.example", "127.0.0.1.evil.example", "localhost.evil.example:8000", "[::2]"):
        assert not host_allowed(header, DEFAULT), header
    assert host_allowed("anything.example", served_hosts(["*"], "127.0.0.1"))


def test_a_single_listen_address_is_served_too() -> None:
    assert host_allowed("10.0.0.5:8000", served_hosts(["localhost"], "10.0.0.5"))
    assert not host_allowed("10.0.0.5:8000", served_hosts(["localhost"], "0.0.0.0"))
    assert served_hosts(["localhost"], "::") == {"localhost"}
